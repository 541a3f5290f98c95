"""quantize_ on models lowbit has never seen, and every bad-input path of the API."""

import copy

import pytest
import torch
from torch import nn

import lowbit
import lowbit.quant
from lowbit.errors import CalibrationError, ConfigError, SelectorError, UnsupportedError, WeightsError
from lowbit.io import load_weights_into
from lowbit.nn import QuantConv2d, QuantLinear


def vgg_like():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    ).eval()


def _data(n=4, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, 1, 28, 28, generator=g) for _ in range(n)]


def test_quantize_user_sequential_model_swaps_and_folds():
    torch.manual_seed(0)
    model = vgg_like()
    x = _data(1)[0]
    ref = model(x)
    q = lowbit.quantize_(model, lowbit.load_recipe("w8a8"), data=_data())
    assert isinstance(q[0], QuantConv2d) and isinstance(q[11], QuantLinear)
    assert isinstance(q[1], nn.Identity)  # BN folded
    assert len(q.lowbit_info["folded"]) == 2
    # 8-bit: the network output stays close to float
    from lowbit.report import sqnr_db

    assert sqnr_db(ref, q(x)) > 25


def test_quantize_is_deterministic_and_idempotent_on_weights():
    torch.manual_seed(0)
    base = vgg_like()
    a = lowbit.quantize_(copy.deepcopy(base), lowbit.PTQConfig(), data=_data())
    b = lowbit.quantize_(copy.deepcopy(base), lowbit.PTQConfig(), data=_data())
    x = _data(1, seed=5)[0]
    assert torch.equal(a(x), b(x))
    wq = a[0].weight_quant
    w = a[0].quantized_weight().detach()
    # quantizing already-quantized weights with the same qparams changes nothing
    again = lowbit.quant.fake_quantize(w, wq.scale, wq.zero_point, wq.spec.format, wq.spec.granularity)
    assert torch.equal(again, w)


def test_per_layer_override_keeps_first_and_last_at_8_bits():
    q = lowbit.quantize_(vgg_like(), lowbit.load_recipe("w4a4"), data=_data())
    assert q[0].weight_quant.spec.bits == 8 and q[0].input_quant.spec.bits == 8
    assert q[11].weight_quant.spec.bits == 8
    assert q[4].weight_quant.spec.bits == 4 and q[4].input_quant.spec.bits == 4


def test_exclude_and_layer_selection():
    cfg = lowbit.PTQConfig(exclude=(lowbit.Select(type="Linear"),))
    q = lowbit.quantize_(vgg_like(), cfg, data=_data())
    assert type(q[9]) is nn.Linear and isinstance(q[4], QuantConv2d)


def test_calibrating_context_manager_and_abort_on_error():
    q = lowbit.quantize_(vgg_like(), lowbit.PTQConfig(), calibrate=False)
    aqs = lowbit.activation_quantizers(q)
    assert not any(a.calibrated for a in aqs)
    with pytest.raises(RuntimeError), lowbit.calibrating(q):
        q(torch.randn(2, 1, 28, 28))
        raise RuntimeError("boom")
    assert not any(a.calibrated for a in aqs)  # nothing half-calibrated
    with lowbit.calibrating(q):
        q(torch.randn(2, 1, 28, 28))
    assert all(a.calibrated for a in aqs)


def test_weight_only_needs_no_data():
    q = lowbit.quantize_(vgg_like(), lowbit.load_recipe("w4-weight-only"))
    assert q[4].input_quant is None and q[4].weight_quant.spec.bits == 4
    assert q.lowbit_info["adjusted"][0] == {"layer": "0", "group_size": 1, "requested": 16}


@pytest.mark.parametrize("policy", ["error", "ignore", "adjust"])
def test_group_policy(policy):
    cfg = lowbit.PTQConfig(
        weight=lowbit.QuantSpec(format=lowbit.IntFormat(bits=4), granularity=lowbit.PerGroup(12)),
        activation=None, group_policy=policy,
    )
    if policy == "error":
        with pytest.raises(ConfigError, match="layer 0: group_size=12 does not divide its 1 input channels"):
            lowbit.quantize_(vgg_like(), cfg)
        return
    with pytest.warns(UserWarning) if policy == "ignore" else _nullcontext():
        q = lowbit.quantize_(vgg_like(), cfg)
    if policy == "ignore":
        assert type(q[4]) is nn.Conv2d
        assert {s["layer"] for s in q.lowbit_info["skipped"]} >= {"4"}
    else:
        assert q[4].weight_quant.spec.granularity.size == 8


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_empty_calibration_data():
    with pytest.raises(CalibrationError, match="empty"):
        lowbit.quantize_(vgg_like(), lowbit.PTQConfig(), data=[])
    with pytest.raises(CalibrationError, match="empty"):
        lowbit.quantize_(vgg_like(), lowbit.PTQConfig(), data=[torch.zeros(0, 1, 28, 28)])


def test_missing_calibration_data():
    with pytest.raises(CalibrationError, match="needs calibration data"):
        lowbit.quantize_(vgg_like(), lowbit.PTQConfig())


def test_nan_in_calibration_data():
    bad = torch.randn(4, 1, 28, 28)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationError, match="NaN/Inf"):
        lowbit.quantize_(vgg_like(), lowbit.PTQConfig(), data=[bad])
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(CalibrationError, match="NaN/Inf"):
        lowbit.quantize_(vgg_like(), lowbit.PTQConfig(), data=[bad])


def test_model_without_quantizable_layer():
    with pytest.raises(UnsupportedError, match="no quantizable layer"):
        lowbit.quantize_(nn.Sequential(nn.ReLU(), nn.Flatten()), lowbit.PTQConfig(), data=_data())


def test_selector_matching_nothing():
    cfg = lowbit.PTQConfig(layers=(lowbit.Select(name="encoder.q_proj"),))
    with pytest.raises(SelectorError, match="encoder.q_proj"):
        lowbit.quantize_(vgg_like(), cfg, data=_data())


def test_unregistered_config():
    class Other(lowbit.Config):
        pass

    with pytest.raises(ConfigError, match="no handler registered for Other.*PTQConfig"):
        lowbit.quantize_(vgg_like(), Other())


def test_weights_mismatch_lists_keys():
    model = vgg_like()
    state = model.state_dict()
    state.pop("0.weight")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"missing keys \['0.weight'\].*unexpected keys \['extra.weight'\]"):
        load_weights_into(model, state)
    state = vgg_like().state_dict()
    state["9.weight"] = torch.zeros(3, 3)
    with pytest.raises(WeightsError, match="shape"):
        load_weights_into(vgg_like(), state)


def test_transform_fn_and_tuple_batches():
    data = [(x, torch.zeros(16, dtype=torch.long)) for x in _data()]
    q = lowbit.quantize_(vgg_like(), lowbit.PTQConfig(), data=data)
    assert q.lowbit_info["calibration_samples"] == 64
    q = lowbit.quantize_(vgg_like(), lowbit.PTQConfig(), data=[{"pixels": x} for x in _data()], transform_fn=lambda b: b["pixels"])
    assert q.lowbit_info["calibration_samples"] == 64


def test_calib_size_limits_samples():
    q = lowbit.quantize_(vgg_like(), lowbit.PTQConfig(calib_size=20), data=_data())
    assert q.lowbit_info["calibration_samples"] == 20

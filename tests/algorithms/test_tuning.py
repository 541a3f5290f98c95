"""Accuracy-aware tuning: the returned config really has the reported held-out accuracy, no raise in
it is redundant, impossible bounds say so with the closest configuration, and bad input is refused."""

import pytest
import torch

import lowbit
from lowbit.algorithms.mixed_precision import accuracy_aware_tune, held_out_split
from lowbit.errors import ConfigError
from lowbit.zoo import load_model


def _minmax(recipe: str):
    cfg = lowbit.load_recipe(recipe)  # min-max grids: the same algorithm, 4x faster to calibrate than MSE
    return cfg.replace(weight=cfg.weight.replace(observer="minmax"), activation=cfg.activation.replace(observer="minmax"))


@pytest.fixture(scope="module")
def resnet_case(fmnist_calib, fmnist_test):
    model = load_model("fmnist-resnet")
    calib = fmnist_calib.subset(128, seed=0)
    val, _ = held_out_split(fmnist_test.subset(600, seed=3), 300)
    return model, calib, val


def _check_result(r, bound, model_fn, calib, val):
    assert r.base_accuracy < r.float_accuracy - bound  # the PTQ config really drops more than the bound
    assert r.met and r.float_accuracy - r.accuracy <= bound + 1e-9 and 0 < len(r.raised) < len(r.candidates)
    # the returned config, quantized afresh, has exactly the reported held-out accuracy
    q = lowbit.quantize_(model_fn(), r.config, data=calib)
    assert lowbit.evaluate(q, val) == pytest.approx(r.accuracy)
    # pruning: lowering any single raised layer of the result was measured, and breaks the bound
    for n in r.raised:
        without = [s for s in r.steps if set(s["raised"]) == set(r.raised) - {n}]
        assert without and without[0]["drop"] > bound
    return q


def test_tuning_meets_the_bound_with_no_redundant_raise_on_the_zoo_resnet(resnet_case):
    model, calib, val = resnet_case
    r = accuracy_aware_tune(model, _minmax("w4a4"), calib, val, max_drop=1.0, method="mse")
    assert "stem.0" not in r.candidates and "fc" not in r.candidates  # already W8A8 in the recipe
    q = _check_result(r, 1.0, lambda: load_model("fmnist-resnet"), calib, val)
    for n in r.raised:
        spec = q.lowbit_info["layers"][n]
        assert spec["weight_bits"] == 8 and spec["activation_bits"] == 8
    assert [s["action"] for s in r.steps][:2] == ["base", "raise"]


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), *[m for _ in range(4) for m in (torch.nn.Linear(64, 64), torch.nn.ReLU())],
                               torch.nn.Linear(64, 10)).eval()


def test_greedy_and_float_raises_on_a_deep_mlp():
    x = torch.randn(400, 64)
    y = _mlp()(x).argmax(1)  # the float model is 100 % right on these; any flip is a drop
    r = accuracy_aware_tune(_mlp(), lowbit.load_recipe("w2a8"), [x[:128]], [(x, y)], max_drop=2.0, method="greedy",
                            raise_to="float")
    q = _check_result(r, 2.0, _mlp, [x[:128]], [(x, y)])
    assert all(n not in q.lowbit_info["layers"] for n in r.raised)  # float layers are not quantized at all
    assert any(s["action"] == "try" for s in r.steps)


def test_loose_bound_raises_nothing(resnet_case):
    model, calib, val = resnet_case
    r = accuracy_aware_tune(model, lowbit.load_recipe("w8a8"), calib, val, max_drop=5.0, method="hessian")
    assert r.met and r.raised == [] and r.evaluations == 1 and r.config == lowbit.load_recipe("w8a8")


def test_impossible_bound_says_so_and_keeps_the_closest():
    torch.manual_seed(0)
    net = lowbit.zoo.models.FmnistMLP().eval()
    x = torch.randn(512, 1, 28, 28)
    y = net(x).argmax(1)  # the float model is 100 % right on these; any flip is a drop
    r = accuracy_aware_tune(net, lowbit.load_recipe("w8a8-per-tensor"), [x[:128]], [(x, y)], max_drop=0.0, method="mse")
    assert r.base_accuracy < 100.0  # per-tensor int8 flips some of these near-tie random inputs
    assert r.candidates == [] and not r.met and r.raised == [] and "NOT met" in r.summary()
    f = accuracy_aware_tune(net, lowbit.load_recipe("w8a8-per-tensor"), [x[:128]], [(x, y)], max_drop=0.0, method="mse",
                            raise_to="float")
    assert f.met and f.accuracy == 100.0 and f.raised  # float layers give the float model back


def test_held_out_split_is_a_partition(fmnist_test):
    a, b = held_out_split(fmnist_test, 5000)
    assert len(a) == len(b) == 5000
    with pytest.raises(ConfigError, match="tuning split"):
        held_out_split(fmnist_test, 10000)


@pytest.mark.parametrize("kw, needle", [
    ({"max_drop": -0.1}, "max_drop"),
    ({"max_drop": float("nan")}, "max_drop"),
    ({"max_drop": 0.1, "method": "random"}, "unknown tuning method"),
    ({"max_drop": 0.1, "raise_to": "w16"}, "raise_to"),
])
def test_bad_tuning_arguments(kw, needle):
    net = lowbit.zoo.models.FmnistMLP().eval()
    x = torch.randn(8, 1, 28, 28)
    with pytest.raises(ConfigError, match=needle):
        accuracy_aware_tune(net, lowbit.load_recipe("w4a8"), [x], [(x, torch.zeros(8, dtype=torch.long))], **kw)


def test_qat_recipe_is_refused():
    net = lowbit.zoo.models.FmnistMLP().eval()
    x = torch.randn(8, 1, 28, 28)
    with pytest.raises(ConfigError, match="QAT"):
        accuracy_aware_tune(net, lowbit.load_recipe("qat-w4a4-lsq"), [x], [(x, torch.zeros(8, dtype=torch.long))], max_drop=0.1)


def test_residual_adds_and_pools_are_one_raisable_unit():
    from lowbit.algorithms.mixed_precision.tuning import ADDS, _candidates, _raised_config

    model = load_model("fmnist-resnet")
    cfg = lowbit.load_recipe("w4a4")  # its adds / pools run at 4 bits: raising every layer cannot undo that
    assert _candidates(model, cfg, "w8a8")[0] == ADDS
    assert ADDS not in _candidates(model, lowbit.load_recipe("w8a8"), "w8a8")  # already 8-bit adds
    assert ADDS not in _candidates(lowbit.zoo.models.FmnistMLP(), cfg, "float")  # no adds / pools to raise

    def add_bits(c):
        q = lowbit.quantize_(load_model("fmnist-resnet"), c, calibrate=False)
        return {m.spec.bits for n, m in q.named_modules() if n.startswith(("lowbit_add", "lowbit_pool")) and hasattr(m, "spec")}

    assert add_bits(cfg) == {4}
    assert add_bits(_raised_config(cfg, [ADDS], "w8a8")) == {8}
    flo = lowbit.quantize_(load_model("fmnist-resnet"), _raised_config(cfg, [ADDS], "float"), calibrate=False)
    assert not flo.lowbit_info.get("adds") and not any(n.startswith("lowbit_add") for n, _ in flo.named_modules())

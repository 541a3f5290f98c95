"""AdaRound: lower layer reconstruction error than nearest rounding, codes on the grid within one step
of nearest, pinned qparams that downstream consumers reproduce, config validation and warnings."""

import copy
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.algorithms.adaround import AdaRoundConfig, adaround_layer, quantizers_bypassed, rectified_sigmoid, rounding_regularizer
from lowbit.algorithms.adaround.refine import inverse_rectified_sigmoid
from lowbit.errors import ConfigError
from lowbit.nn import QuantConv2d, WeightQuant
from lowbit.nn.layers import is_quant_module
from lowbit.quant import dequantize, fake_quantize, quantize
from lowbit.runtime import integer_exact
from lowbit.zoo import load_model

RECIPES = Path(lowbit.__file__).parent / "recipes"
W4 = lowbit.QuantSpec(format=lowbit.IntFormat(bits=4), granularity=lowbit.PerChannel(axis=0), observer="mse")
W2 = lowbit.QuantSpec(format=lowbit.IntFormat(bits=2), granularity=lowbit.PerChannel(axis=0), observer="mse")
A8 = lowbit.QuantSpec(format=lowbit.IntFormat(bits=8, signed=False), mapping=lowbit.Affine(), observer="mse")


def _weight_layers(model):
    return {n: m for n, m in model.named_modules() if is_quant_module(m) and m.weight_quant is not None}


@pytest.fixture(scope="module")
def mlp_w2a8(fmnist_calib):
    """(float model, AdaRounded W2A8 model) on the zoo MLP: 2-bit weights, where nearest rounding hurts."""
    float_model = load_model("fmnist-mlp")
    cfg = AdaRoundConfig(weight=W2, activation=A8, iters=150)
    return float_model, lowbit.quantize_(copy.deepcopy(float_model), cfg, data=fmnist_calib)


# ---------------------------------------------------------------- quality
def test_layer_reconstruction_beats_nearest_rounding(mlp_w2a8):
    _, q = mlp_w2a8
    per_layer = q.lowbit_info["adaround"]
    assert sorted(per_layer) == ["fc1", "fc2"]
    assert per_layer["fc1"]["activation"] == "ReLU" and per_layer["fc2"]["activation"] is None  # fc1 feeds a ReLU
    for name, r in per_layer.items():
        assert r["loss_after"] < r["loss_before"], (name, r)
        assert 0 < r["flipped_pct"] < 50
        assert r["samples"] == 512
    assert q.lowbit_info["adaround_seconds"] > 0


def test_accuracy_above_nearest_rounding(mlp_w2a8, fmnist_calib, fmnist_small_test):
    float_model, q = mlp_w2a8
    plain = lowbit.quantize_(copy.deepcopy(float_model), lowbit.PTQConfig(weight=W2, activation=A8), data=fmnist_calib)
    # measured: 85.6 % vs 83.6 % (float 89.2 %) on these 2000 test images
    assert lowbit.evaluate(q, fmnist_small_test) >= lowbit.evaluate(plain, fmnist_small_test) + 1.0


# ---------------------------------------------------------------- invariants
def test_weights_on_grid_within_one_step_of_nearest(mlp_w2a8):
    float_model, q = mlp_w2a8
    for name, layer in _weight_layers(q).items():
        wq = layer.weight_quant
        fmt, gran = wq.spec.format, wq.spec.granularity
        w_float = float_model.get_submodule(name).weight.detach()
        # the grid is the one the weight quantizer picks for the float weight (AdaRound keeps S, Z)
        scale, zp = WeightQuant(wq.spec).qparams(w_float)
        torch.testing.assert_close(wq.scale, scale, rtol=0, atol=0)
        assert torch.equal(wq.zero_point, zp)
        codes = quantize(layer.weight.detach(), scale, zp, fmt, gran).long()
        assert int(codes.min()) >= fmt.qmin and int(codes.max()) <= fmt.qmax
        assert torch.equal(dequantize(codes, scale, zp, gran), layer.weight.detach())  # exactly on the grid
        nearest = quantize(w_float, scale, zp, fmt, gran).long()
        assert int((codes - nearest).abs().max()) == 1  # some weights rounded the other way, none further


def test_pinned_qparams_reproduce_the_codes(mlp_w2a8):
    _, q = mlp_w2a8
    for layer in _weight_layers(q).values():
        wq = layer.weight_quant
        pinned = (wq.scale.clone(), wq.zero_point.clone())
        scale, zp = wq.qparams(layer.weight)  # cached: no re-observation of the rounded weight
        assert torch.equal(scale, pinned[0]) and torch.equal(zp, pinned[1])
        # fake-quantizing the stored weight is the identity: nearest rounding gives back AdaRound's codes
        assert torch.equal(layer.quantized_weight(), layer.weight)
        assert torch.equal(fake_quantize(layer.weight.detach(), scale, zp, wq.spec.format, wq.spec.granularity), layer.weight.detach())


def test_integer_program_sees_adarounded_weights(mlp_w2a8, fmnist_small_test):
    _, q = mlp_w2a8
    x = fmnist_small_test.images[:200]
    with torch.no_grad():
        fq = q(x)
    # integer_exact re-derives codes from the stored weights and pinned qparams
    assert (integer_exact(q)(x).argmax(1) == fq.argmax(1)).float().mean() >= 0.99


def test_onnx_export_carries_adarounded_codes(mlp_w2a8, fmnist_small_test, tmp_path):
    pytest.importorskip("onnxruntime")
    from lowbit.runtime import OrtModel

    _, q = mlp_w2a8
    x = fmnist_small_test.images[:500]
    lowbit.export_onnx(q, x[:1], tmp_path / "m.onnx")
    with torch.no_grad():
        ref = q(x)
    assert (OrtModel(tmp_path / "m.onnx")(x).argmax(1) == ref.argmax(1)).float().mean() >= 0.99


def test_packed_checkpoint_round_trip(mlp_w2a8, tmp_path):
    _, q = mlp_w2a8
    lowbit.save(q, tmp_path / "m.lowbit")
    loaded = lowbit.load(tmp_path / "m.lowbit", model=load_model("fmnist-mlp", pretrained=False))
    for name, layer in _weight_layers(q).items():
        assert torch.equal(loaded.get_submodule(name).weight, layer.weight)


def test_deterministic_for_a_seed(fmnist_calib):
    cfg = AdaRoundConfig(weight=W4, activation=None, iters=20, min_samples_warn=0)
    data = fmnist_calib.images[:64]
    a = lowbit.quantize_(load_model("fmnist-mlp"), cfg, data=data)
    b = lowbit.quantize_(load_model("fmnist-mlp"), cfg, data=data)
    assert torch.equal(a.fc1.weight, b.fc1.weight) and torch.equal(a.fc2.weight, b.fc2.weight)


def test_resnet_through_quantize_(fmnist_calib, fmnist_small_test):
    cfg = AdaRoundConfig.from_yaml((RECIPES / "w4a8-adaround.yaml").read_text()).replace(iters=5, calib_size=64, min_samples_warn=0)
    q = lowbit.quantize_(load_model("fmnist-resnet"), cfg, data=fmnist_calib)
    info = q.lowbit_info
    assert info["config"]["kind"] == "adaround" and info["calibration_samples"] == 64
    names = list(_weight_layers(q))
    assert list(info["adaround"]) == names  # every weight-quantized layer, in execution order
    assert all(r["samples"] == 64 for r in info["adaround"].values())
    # the loss sees the ReLU that directly reads a conv (through its folded BN), not the one after a residual add
    with_relu = {n for n, r in info["adaround"].items() if r["activation"] == "ReLU"}
    assert with_relu == {"stem.0", "layers.0.conv1", "layers.1.conv1", "layers.2.conv1"}
    assert lowbit.evaluate(q, fmnist_small_test.subset(500, seed=0)) > 88


@pytest.mark.parametrize(
    "spec",
    [
        W4,
        lowbit.QuantSpec(format=lowbit.IntFormat(bits=3), granularity=lowbit.PerTensor()),
        lowbit.QuantSpec(format=lowbit.IntFormat(bits=4, signed=False), mapping=lowbit.Affine(), granularity=lowbit.PerGroup(8)),
        lowbit.QuantSpec(format=lowbit.IntFormat(bits=2), granularity=lowbit.PerChannel(axis=0), observer="mse"),
    ],
    ids=["int4-per-channel", "int3-per-tensor", "uint4-affine-per-group", "int2-mse"],
)
def test_single_conv_any_grid(spec):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 8, 3, padding=1)
    x = torch.randn(64, 16, 6, 6)
    with torch.no_grad():
        target = conv(x)
    layer = QuantConv2d.from_float(conv, spec, None)
    scale, zp = (t.clone() for t in layer.weight_quant.qparams(layer.weight))
    cfg = AdaRoundConfig(weight=spec, iters=100, min_samples_warn=0)
    r = adaround_layer(layer, x, target, cfg, torch.Generator().manual_seed(0))
    assert r["loss_after"] < r["loss_before"]
    fmt, gran = spec.format, spec.granularity
    codes = quantize(layer.weight.detach(), scale, zp, fmt, gran).long()
    assert torch.equal(dequantize(codes, scale, zp, gran), layer.weight.detach())
    assert int((codes - quantize(conv.weight.detach(), scale, zp, fmt, gran).long()).abs().max()) <= 1
    assert torch.equal(layer.quantized_weight(), layer.weight)


# ---------------------------------------------------------------- math pieces
def test_rectified_sigmoid_and_regularizer():
    v = torch.tensor([-100.0, 0.0, 100.0])
    assert rectified_sigmoid(v).tolist() == [0.0, 0.5, 1.0]  # reaches 0 and 1 exactly
    h = torch.linspace(0.0, 0.99, 50)
    torch.testing.assert_close(rectified_sigmoid(inverse_rectified_sigmoid(h)), h, rtol=0, atol=1e-6)
    assert float(rounding_regularizer(torch.tensor([0.0, 1.0]), 2.0)) == 0.0
    assert float(rounding_regularizer(torch.tensor([0.5, 0.5]), 20.0)) == 2.0


def test_quantizers_bypassed_gives_float_and_restores_on_error(mlp_w2a8):
    float_model, q = mlp_w2a8
    x = torch.randn(4, 1, 28, 28)
    quantized = q(x)
    with pytest.raises(RuntimeError, match="boom"), quantizers_bypassed(q):
        assert not torch.equal(q(x), quantized)
        raise RuntimeError("boom")
    assert torch.equal(q(x), quantized)


# ---------------------------------------------------------------- config, recipes, errors
@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"iters": 0}, "iters"),
        ({"iters": 2.5}, "iters"),
        ({"lr": 0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"reg_weight": -1.0}, "reg_weight"),
        ({"beta_start": 0.0}, "beta_start"),
        ({"beta_start": 2.0, "beta_end": 20.0}, "beta_start .* must be >= beta_end"),
        ({"warmup": 1.0}, "warmup"),
        ({"batch_size": 0}, "batch_size"),
        ({"min_samples_warn": -1}, "min_samples_warn"),
        ({"seed": "a"}, "seed"),
        ({"activation_in_loss": 1}, "activation_in_loss"),
        ({"weight": None}, "needs a weight quantizer"),
        ({"calib_size": 0}, "calib_size"),  # PTQConfig's own checks still run
    ],
)
def test_config_validation(changes, needle):
    with pytest.raises(ConfigError, match=needle):
        AdaRoundConfig(**changes)


@pytest.mark.parametrize("name", ["w4a8-adaround", "w4a4-adaround"])
def test_recipes_load_and_round_trip(name):
    cfg = AdaRoundConfig.from_yaml((RECIPES / f"{name}.yaml").read_text())
    assert cfg.kind == "adaround" and cfg.weight.bits == 4 and cfg.overrides
    assert AdaRoundConfig.from_yaml(cfg.to_yaml()) == cfg
    assert AdaRoundConfig.from_dict(cfg.to_dict()) == cfg


def test_yaml_numbers_are_floats_and_unknown_keys_rejected():
    cfg = AdaRoundConfig.from_yaml("kind: adaround\nlr: 1\nreg_weight: 0\n")
    assert isinstance(cfg.lr, float) and isinstance(cfg.reg_weight, float)
    with pytest.raises(ConfigError, match="'iter'"):
        AdaRoundConfig.from_yaml("kind: adaround\niter: 10\n")
    with pytest.raises(ConfigError, match="does not match AdaRoundConfig"):
        AdaRoundConfig.from_yaml("kind: ptq\n")


def test_few_samples_warn_with_the_number(fmnist_calib):
    cfg = AdaRoundConfig(weight=W4, activation=None, iters=2)
    with pytest.warns(UserWarning, match="got 48 calibration samples, fewer than min_samples_warn=256"):
        q = lowbit.quantize_(load_model("fmnist-mlp"), cfg, data=fmnist_calib.images[:48])
    assert sorted(q.lowbit_info["adaround"]) == ["fc1", "fc2"]  # it warns, then still runs


def test_no_weight_quantized_layer_is_an_error():
    float_weights = (lowbit.Override(select=lowbit.Select(type="Linear"), weight=None),)
    cfg = AdaRoundConfig(overrides=float_weights, iters=2, min_samples_warn=0)
    with pytest.raises(ConfigError, match="no layer with a weight quantizer"):
        lowbit.quantize_(load_model("fmnist-mlp"), cfg, data=[torch.randn(8, 1, 28, 28)])

"""Integer-only engine: bit-exact with the integer-exact simulation, close to fake-quant, clear errors."""

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import CalibrationError, UnsupportedError
from lowbit.runtime import IntegerEngine, integer_exact
from lowbit.runtime.integer import quantize_multiplier, rshift_rne
from lowbit.zoo import load_model


# ---------------------------------------------------------------- arithmetic (reference parity)
def test_rshift_rne_is_round_half_even():
    p = torch.arange(-4000, 4000)
    for r in (1, 2, 3, 7):
        assert torch.equal(rshift_rne(p, torch.tensor(r)), torch.round(p.double() / 2**r).long())


def test_quantize_multiplier_reconstructs():
    m = torch.logspace(-9, 3, 500, dtype=torch.float64)  # 2^-30 .. 1000
    M0, r = quantize_multiplier(m)
    assert bool(((M0 >= 2**30) & (M0 <= 2**31)).all())
    rel = (M0.double() / 2.0 ** r.double() - m).abs() / m
    assert float(rel.max()) < 2**-30


def test_quantize_multiplier_rejects_bad():
    with pytest.raises(UnsupportedError):
        quantize_multiplier(torch.tensor([0.0], dtype=torch.float64))
    with pytest.raises(UnsupportedError):
        quantize_multiplier(torch.tensor([2.0**40], dtype=torch.float64))


# ---------------------------------------------------------------- conformance on the zoo
@pytest.fixture(scope="module")
def zoo_quantized(fmnist_calib):
    return {n: lowbit.quantize_(load_model(n), lowbit.load_recipe("w8a8"), data=fmnist_calib) for n in ("fmnist-resnet", "fmnist-mobilenet")}


@pytest.mark.parametrize("name", ["fmnist-resnet", "fmnist-mobilenet"])
def test_engine_bit_identical_to_integer_exact(zoo_quantized, fmnist_test, name):
    q = zoo_quantized[name]
    x = fmnist_test.images[:300]
    eng, sim = IntegerEngine(q)(x), integer_exact(q)(x)
    assert torch.equal(eng, sim)
    with torch.no_grad():
        fq = q(x)
    # the integer program differs from float fake-quant only in rounding: same top-1 almost always
    assert (eng.argmax(1) == fq.argmax(1)).float().mean() >= 0.99
    assert (eng.argmax(1) == fmnist_test.labels[:300]).float().mean() >= 0.88


def test_engine_accumulator_is_integer(zoo_quantized, fmnist_test):
    out = IntegerEngine(zoo_quantized["fmnist-resnet"]).run(fmnist_test.images[:4])
    assert out.n.dtype == torch.int64 and out.n.shape == (4, 10)
    assert torch.equal(out.real(), IntegerEngine(zoo_quantized["fmnist-resnet"])(fmnist_test.images[:4]))


def test_int_mm_fallback_is_identical(zoo_quantized, fmnist_test, monkeypatch):
    q = zoo_quantized["fmnist-resnet"]
    x = fmnist_test.images[:16]
    fast = IntegerEngine(q)(x)

    def missing(*a, **k):
        raise RuntimeError("no int8 GEMM")

    monkeypatch.setattr(torch, "_int_mm", missing)
    assert torch.equal(IntegerEngine(q)(x), fast)


# ---------------------------------------------------------------- op coverage on a model with every supported op
class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.r6 = nn.ReLU6()
        self.mp = nn.MaxPool2d(2)
        self.c1d = nn.Conv1d(8, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4 * 49, 10)

    def forward(self, x):
        x = torch.nn.functional.avg_pool2d(torch.relu(self.c1(x)), 2)
        x = x + self.r6(self.c2(x))
        x = self.mp(self.dw(x))
        x = self.c1d(x.flatten(2))
        return self.fc(x.flatten(1))


def test_all_ops_bit_exact_and_close_to_fakequant():
    torch.manual_seed(0)
    m = Zoo().eval()
    data = [torch.randn(32, 1, 28, 28) for _ in range(4)]
    q = lowbit.quantize_(m, lowbit.load_recipe("w8a8"), data=data)
    x = torch.randn(20, 1, 28, 28)
    eng, sim = IntegerEngine(q)(x), integer_exact(q)(x)
    assert torch.equal(eng, sim)
    with torch.no_grad():
        fq = q(x)
    assert float((eng - fq).abs().max()) < 0.05 * float(fq.abs().max())


def test_signed_activations_and_per_tensor_weights():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 5)).eval()
    cfg = lowbit.load_recipe("w8a8-per-tensor")
    cfg = cfg.replace(activation=cfg.activation.replace(signed=True, mapping="symmetric"))
    q = lowbit.quantize_(m, cfg, data=[torch.randn(16, 1, 28, 28)])
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(IntegerEngine(q)(x), integer_exact(q)(x))


def test_low_bit_layers_with_8bit_residual_sums_bit_exact(fmnist_calib, fmnist_test):
    """add_activation puts the residual sums on their own (8-bit) grid while layer inputs stay at 4 bits:
    no grid is shared across the two widths, and the integer program still matches its simulation."""
    cfg = lowbit.load_recipe("w4a4").replace(add_activation=lowbit.load_recipe("w8a8").activation)
    q = lowbit.quantize_(load_model("fmnist-resnet"), cfg, data=fmnist_calib)
    from lowbit.nn import QuantAdd

    adds = [m for m in q.modules() if isinstance(m, QuantAdd)]
    assert adds and all(a.output_quant.spec.bits == 8 for a in adds)
    assert q.get_submodule("layers.1.conv1").input_quant.spec.bits == 4
    x = fmnist_test.images[:64]
    assert torch.equal(IntegerEngine(q)(x), integer_exact(q)(x))


# ---------------------------------------------------------------- bad input
def _quantized(model, recipe="w8a8", **replace):
    cfg = lowbit.load_recipe(recipe)
    if replace:
        cfg = cfg.replace(**replace)
    return lowbit.quantize_(model, cfg, data=[torch.randn(16, 1, 28, 28)])


def test_unsupported_op_is_named():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 26 * 26, 5)).eval()
    with pytest.raises(UnsupportedError, match=r"layer '1' \(Sigmoid\)"):
        IntegerEngine(_quantized(m))


def test_uncalibrated_model_is_refused():
    q = lowbit.quantize_(load_model("fmnist-mlp"), lowbit.load_recipe("w8a8"), calibrate=False)
    with pytest.raises(CalibrationError, match="not calibrated"):
        IntegerEngine(q)


@pytest.mark.parametrize("recipe,match", [("w8a8-dynamic", "dynamic"), ("w4-weight-only", "not quantized|per_group")])
def test_recipes_the_engine_cannot_run(recipe, match):
    with pytest.raises(UnsupportedError, match=match):
        IntegerEngine(_quantized(load_model("fmnist-mlp"), recipe))


def test_excluded_layer_is_named():
    q = _quantized(load_model("fmnist-mlp"), exclude=[lowbit.Select(name="fc2")])
    with pytest.raises(UnsupportedError, match="fc2"):
        integer_exact(q)


def test_unquantized_add_is_named():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return self.a(x) + self.b(x)

    q = _quantized(Res().eval(), quantize_adds=False)
    with pytest.raises(UnsupportedError, match="quantize_adds"):
        IntegerEngine(copy.deepcopy(q))

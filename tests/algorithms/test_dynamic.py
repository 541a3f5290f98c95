"""Instance-aware dynamic quantization: dynamic layers against static ones, grouped inference, measured
BitOPs against a hand count, the budget regularizer's direction, a tiny end-to-end run, the zoo
models' split, and every error path."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.algorithms.dynamic import (
    BitController,
    DynamicConfig,
    DynamicQuantConv2d,
    DynamicQuantLinear,
    DynamicQuantModel,
    evaluate_dynamic,
    prepare,
    train_dynamic,
)
from lowbit.errors import CalibrationError, ConfigError, UnsupportedError
from lowbit.quant import fake_quantize
from lowbit.zoo import load_model
from lowbit.zoo.models import FmnistMLP


class Toy(nn.Module):
    """stem (conv+BN+ReLU, the trunk) -> conv -> depthwise conv -> GAP -> linear head.
    The forward is not a sequence of children (the GAP is a tensor method)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    m = Toy()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding matters
        bn = m.stem[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def toy_dyn(bits=(2, 4, 8), hidden=8, n=64, **kw) -> tuple[DynamicQuantModel, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(n, 1, 28, 28)
    return prepare(toy(), DynamicConfig(bits=bits, hidden=hidden, **kw), [x]), x


def calibrated(layer, x):
    layer.start_observing()
    layer(x)
    layer.finish_observing()
    return layer


class FixedChoice(BitController):
    """A controller stub whose hard choice per sample and layer is given ([B, L] candidate indices)."""

    def __init__(self, base: BitController, choice: torch.Tensor) -> None:
        super().__init__(base.trunk_channels, base.n_layers, base.K, base.hidden)
        self.choice = choice

    def forward(self, h):
        return F.one_hot(self.choice, self.K).float() * 10.0


# --------------------------------------------------------------------------- dynamic layers
LAYERS = {
    "conv": lambda: nn.Conv2d(3, 6, 3, stride=2, padding=1),
    "depthwise": lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
    "linear": lambda: nn.Linear(12, 5),
}


def _input(kind: str, signed: bool, n: int = 6) -> torch.Tensor:
    shape = {"conv": (n, 3, 9, 9), "depthwise": (n, 6, 7, 7), "linear": (n, 12)}[kind]
    return torch.randn(shape) if signed else torch.rand(shape) * 3


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_hard_selection_equals_the_static_layer_at_that_width(kind, signed, k):
    torch.manual_seed(0)
    mod = LAYERS[kind]()
    cls = DynamicQuantLinear if kind == "linear" else DynamicQuantConv2d
    x = _input(kind, signed)
    layer = calibrated(cls(mod, bits=(2, 4, 8)), x)
    assert layer.input_signed == signed
    with torch.no_grad():  # move the steps off their calibrated values: "the same steps" must be the learned ones
        for q in (*layer.weight_quants, *layer.input_quants):
            q.scale.mul_(0.9)
    sel = F.one_hot(torch.full((x.shape[0],), k), 3).float()
    y = layer(x, sel)
    static = layer.to_static(k)
    assert type(static).__name__ == ("QuantLinear" if kind == "linear" else "QuantConv2d")
    assert static.weight_quant.spec.bits == static.input_quant.spec.bits == (2, 4, 8)[k]
    torch.testing.assert_close(y, static(x), rtol=0, atol=0)
    # and against the formula itself (lowbit.quant.fake_quantize), independent of both modules
    wq, aq = layer.weight_quants[k], layer.input_quants[k]
    w = fake_quantize(mod.weight, wq.scale.abs().detach(), wq.zero_point, wq.spec.format, wq.spec.granularity)
    xq = fake_quantize(x, aq.scale.abs().detach(), aq.zero_point, aq.spec.format, aq.spec.granularity)
    ref = F.linear(xq, w, mod.bias) if kind == "linear" else F.conv2d(xq, w, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)
    assert not aq.spec.format.signed or signed  # unsigned grid (Z = 0) for non-negative inputs
    assert int(aq.zero_point) == 0


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("signed", [False, True])
def test_one_bit_candidate_is_binary_weights_and_a_two_level_input_grid(kind, signed):
    torch.manual_seed(0)
    mod = LAYERS[kind]()
    cls = DynamicQuantLinear if kind == "linear" else DynamicQuantConv2d
    x = _input(kind, signed)
    layer = calibrated(cls(mod, bits=(1, 2, 16)), x)
    w1 = layer.quantized_weight(0)
    alpha = mod.weight.detach().abs().flatten(1).mean(1)
    torch.testing.assert_close(w1.abs().flatten(1), alpha[:, None].expand_as(w1.flatten(1)))  # a sign(W), a = mean|W| per row
    xq = layer.input_quants[0](x)
    assert torch.unique(xq).numel() <= 2  # two levels
    if not signed:
        assert float(xq.detach().min()) == 0.0
    sel = F.one_hot(torch.zeros(x.shape[0], dtype=torch.long), 3).float()
    static = layer.to_static(0)
    torch.testing.assert_close(layer(x, sel), static(x), rtol=0, atol=0)
    assert [c["bitops"] for c in layer.candidate_costs()] == [layer.macs, 4 * layer.macs, 256 * layer.macs]
    # the 16-bit candidate is within float rounding of the float layer
    torch.testing.assert_close(layer(x, F.one_hot(torch.full((x.shape[0],), 2), 3).float()), mod(x), rtol=1e-3, atol=2e-3)


def test_grouped_inference_on_a_mixed_batch_equals_per_sample_evaluation():
    torch.manual_seed(0)
    x = torch.rand(9, 3, 9, 9)
    layer = calibrated(DynamicQuantConv2d(nn.Conv2d(3, 6, 3, padding=1), bits=(2, 3, 5, 8)), x)
    choice = torch.tensor([0, 3, 1, 1, 3, 0, 2, 3, 1])
    sel = F.one_hot(choice, 4).float()
    calls = []
    orig = layer.candidate_forward
    layer.candidate_forward = lambda xx, k: calls.append((k, xx.shape[0])) or orig(xx, k)
    y = layer(x, sel)
    assert sorted(calls) == [(0, 2), (1, 3), (2, 1), (3, 3)]  # one op per candidate, on its own samples only
    for j in range(9):
        torch.testing.assert_close(y[j : j + 1], orig(x[j : j + 1], int(choice[j])), rtol=0, atol=1e-6)
    # the training path (a selection with a gradient) computes the same values
    y_mixed = layer(x, sel.clone().requires_grad_())
    torch.testing.assert_close(y_mixed, y, rtol=0, atol=1e-6)


def test_training_path_runs_each_sample_once_with_autograd_and_passes_the_straight_through_gradient():
    torch.manual_seed(0)
    x = torch.rand(5, 12)
    layer = calibrated(DynamicQuantLinear(nn.Linear(12, 4), bits=(2, 3, 4, 6)), x)
    calls = []
    orig = layer.candidate_forward
    layer.candidate_forward = lambda xx, k: calls.append((k, xx.shape[0], torch.is_grad_enabled())) or orig(xx, k)
    sel = F.one_hot(torch.tensor([0, 2, 2, 0, 0]), 4).float().requires_grad_()
    y = layer(x, sel)
    # with autograd: each sample at its own candidate; without: every other candidate on the samples that did not pick it
    assert sorted(c for c in calls if c[2]) == [(0, 3, True), (2, 2, True)]
    assert sorted(c for c in calls if not c[2]) == [(0, 2, False), (1, 5, False), (2, 3, False), (3, 5, False)]
    g = torch.randn_like(y)
    (y * g).sum().backward()
    expect = torch.stack([(g * orig(x, k)).sum(1) for k in range(4)], 1)  # dL/dsel_jk = <dL/dy_j, y_j^(k)>, every k
    torch.testing.assert_close(sel.grad, expect, rtol=1e-5, atol=1e-5)
    assert layer.weight.grad is not None and all(q.scale.grad is not None for q in layer.weight_quants[::2])
    assert all(q.scale.grad is None for q in layer.weight_quants[1::2])  # nobody chose 3 or 6 bits


def test_straight_through_path_has_the_values_and_gradients_of_the_plain_sum():
    torch.manual_seed(0)
    x = torch.randn(10, 4, 8, 8)
    layer = calibrated(DynamicQuantConv2d(nn.Conv2d(4, 6, 3, padding=1), bits=(2, 3, 4)), x)
    logits = torch.randn(10, 3)

    def run(fn):
        layer.zero_grad()
        xx, lg = x.clone().requires_grad_(), logits.clone().requires_grad_()
        soft = lg.softmax(1)
        sel = F.one_hot(lg.argmax(1), 3).float() - soft.detach() + soft  # a straight-through sample
        y = fn(xx, sel)
        y.sin().sum().backward()
        return [y.detach(), xx.grad, lg.grad] + [p.grad.clone() for p in layer.parameters() if p.grad is not None]

    fast, plain = run(layer._mixed), run(layer._soft)
    assert len(fast) == len(plain) == 3 + 8  # weight, bias, 3 + 3 steps
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_candidate_costs_are_macs_times_both_widths():
    torch.manual_seed(0)
    x = torch.rand(2, 4, 10, 10)
    layer = calibrated(DynamicQuantConv2d(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), bits=(3, 5)), x)
    macs = 5 * 5 * 8 * (4 // 2) * 9
    assert layer.macs == macs
    assert [(c["bits"], c["bitops"]) for c in layer.candidate_costs()] == [(3, macs * 9), (5, macs * 25)]


# --------------------------------------------------------------------------- the model
def test_toy_structure_and_bn_folding():
    dyn, x = toy_dyn()
    assert dyn.trunk == ("stem",) and dyn.cut == "stem"
    assert dyn.dynamic_layers == ("body.0", "body.2") and dyn.fixed_layers == ("stem.0", "head") and dyn.classifier == "head"
    assert isinstance(dyn.model.stem[1], nn.Identity)  # BN folded into the stem conv
    assert dyn.model.get_submodule("stem.0").bits == (8,) and dyn.model.get_submodule("head").bits == (8,)
    assert dyn.model.get_submodule("body.2").bits == (2, 4, 8)
    # ReLU outputs feed the dynamic layers: unsigned grids; the normalized image feeds the stem: signed
    assert not dyn.model.get_submodule("body.0").input_signed and dyn.model.get_submodule("stem.0").input_signed
    # with every dynamic layer at 8 bits the dynamic model is the static W8A8 model: close to float
    dyn.controller = FixedChoice(dyn.controller, torch.full((x.shape[0], 2), 2))
    with torch.no_grad():
        err = (dyn.eval()(x) - toy()(x)).abs().max() / toy()(x).abs().max()
    assert err < 0.05


def test_measured_bitops_equal_the_hand_count_for_known_choices():
    dyn, x = toy_dyn(bits=(2, 4, 8), hidden=8, n=3)
    choice = torch.tensor([[0, 0], [2, 1], [1, 2]])  # per sample, candidate index for body.0, body.2
    dyn.controller = FixedChoice(dyn.controller, choice)
    dyn.eval()(x)
    stem = 28 * 28 * 4 * (1 * 9)  # out H*W*C_out * (C_in/groups * k*k)
    body0 = 28 * 28 * 16 * (4 * 9)
    body2 = 28 * 28 * 16 * (1 * 9)  # depthwise
    head = 10 * 16
    ctrl = (4 * 8 + 8 * 2 * 3) * 32 * 32  # MLP MACs in float
    fixed = (stem + head) * 8 * 8
    b = (2, 4, 8)
    expect = [fixed + ctrl + body0 * b[i] ** 2 + body2 * b[j] ** 2 for i, j in choice.tolist()]
    assert dyn.last_bitops.tolist() == expect
    assert dyn.last_bits.tolist() == [[2, 2], [8, 4], [4, 8]]
    assert dyn.reference_bitops() == fixed + (body0 + body2) * 64
    assert dyn.min_bitops() == fixed + ctrl + (body0 + body2) * 4 and dyn.max_bitops() == fixed + ctrl + (body0 + body2) * 64
    lo, hi = dyn.bitops_range()
    assert lo == dyn.min_bitops() / dyn.reference_bitops() and hi == dyn.max_bitops() / dyn.reference_bitops()
    # the expected cost under a one-hot probability is the measured cost of that choice
    p = F.one_hot(choice, 3).float()
    torch.testing.assert_close(dyn.expected_bitops(p), torch.tensor(expect, dtype=torch.float32), rtol=1e-6, atol=0)


def test_eval_choices_are_argmax_and_train_choices_are_one_hot_samples():
    dyn, x = toy_dyn(n=32)
    with torch.no_grad():
        dyn.controller.fc2.weight.mul_(20)  # a confident controller: argmax differs between samples
    dyn.eval()(x)
    assert torch.equal(dyn.last_choice, dyn.last_logits.argmax(-1))
    first = dyn.last_choice.clone()
    dyn(x)
    assert torch.equal(dyn.last_choice, first)  # deterministic in eval
    assert len(set(first[:, 0].tolist())) > 1  # per-sample choices, not one per batch
    dyn.train()
    dyn.tau = 1.0
    torch.manual_seed(0)
    out = dyn(x)
    assert out.shape == (32, 10) and dyn.last_probs.requires_grad
    torch.testing.assert_close(dyn.last_probs.sum(-1), torch.ones(32, 2))
    assert all(layer.selection is None for layer in dyn.model.modules() if hasattr(layer, "selection"))  # cleared after forward


def test_noise_zero_trains_on_the_argmax_choices_and_the_sampled_cost_is_the_measured_one():
    dyn, x = toy_dyn(n=32)
    with torch.no_grad():
        dyn.controller.fc2.weight.mul_(20)
    dyn.eval()(x)
    argmax = dyn.last_choice.clone()
    dyn.train()
    dyn.noise = 0.0
    dyn(x)
    assert torch.equal(dyn.last_choice, argmax)  # no noise: training takes the choices inference takes
    dyn.noise = 1.0
    torch.manual_seed(0)
    dyn(x)
    assert not torch.equal(dyn.last_choice, argmax)  # with noise: samples
    cost = dyn.sampled_bitops()
    torch.testing.assert_close(cost.detach(), dyn.last_bitops.to(cost.dtype))  # its value is the measured BitOPs
    cost.sum().backward()
    assert dyn.controller.fc2.weight.grad is not None and dyn.controller.fc2.weight.grad.abs().sum() > 0


def test_selections_are_cleared_when_the_forward_fails():
    dyn, x = toy_dyn()
    last = dyn.model.get_submodule("body.2")
    seen = []

    def boom(xx, w):
        seen.append(dyn.model.get_submodule("body.0").selection is not None)
        raise RuntimeError("boom")

    last._op = boom
    with pytest.raises(RuntimeError, match="boom"):
        dyn.eval()(x)
    assert seen and all(seen)  # the selections were set while the rest of the network ran
    assert all(getattr(m, "selection", None) is None for m in dyn.model.modules())  # ... and cleared after the failure


def test_deepcopy_gives_the_same_outputs():
    dyn, x = toy_dyn()
    dup = copy.deepcopy(dyn)
    with torch.no_grad():
        torch.testing.assert_close(dup.eval()(x), dyn.eval()(x), rtol=0, atol=0)
    assert torch.equal(dup.last_bitops, dyn.last_bitops)


@pytest.mark.parametrize("target,start", [(0.25, 2), (1.0, 0)])
def test_budget_regularizer_moves_expected_bitops_toward_the_target(target, start):
    """Starting above the target (controller biased to 8 bits) the expected cost falls; starting below
    (biased to 2 bits, target 1.0) it rises."""
    dyn, x = toy_dyn(bits=(2, 4, 8), n=128)
    with torch.no_grad():
        dyn.controller.fc2.bias.copy_(F.one_hot(torch.tensor([start, start]), 3).float().flatten() * 1.5)
    y = torch.randint(0, 10, (128,))

    def expected():
        with torch.no_grad():
            dyn.eval()(x)
            return float(dyn.expected_bitops(normalized=True).mean())

    before = expected()
    assert (before > target) == (start == 2)
    train_dynamic(dyn, (x, y), epochs=1, lr=1e-6, controller_lr=0.05, batch_size=32, target_bitops=target, reg_weight=20.0,
                  tau=(1.0, 1.0), progress=False)
    after = expected()
    assert abs(after - target) < abs(before - target) - 0.02, (before, after)


def test_end_to_end_tiny_run_and_consistent_evaluation(fmnist_calib):
    x, y = fmnist_calib.images[:256], fmnist_calib.labels[:256]
    torch.manual_seed(0)
    cfg = DynamicConfig(bits=(2, 3, 4), target_bitops=0.7, hidden=16, epochs=1, lr=1e-3, batch_size=64)
    float_model = toy()
    dyn = prepare(float_model, cfg, [x])
    hist = train_dynamic(dyn, (x, y), **{**cfg.train_kwargs(), "progress": False}, teacher=float_model, val_data=(x[:64], y[:64]))
    (h,) = hist["history"]
    assert h["epoch"] == 1 and all(torch.isfinite(torch.tensor(h[k])) for k in ("loss", "task_loss", "reg_loss"))
    assert h["tau"] == pytest.approx(0.5) and 0 < h["expected_fraction"] <= dyn.bitops_range()[1]
    r = evaluate_dynamic(dyn, fmnist_calib.subset(200, seed=3))
    n = r["n"]
    assert n == 200 and r["bits"].shape == (n, 2) and r["bitops"].shape == (n,) and r["correct"].shape == (n,)
    assert r["accuracy"] == pytest.approx(100 * r["correct"].double().mean().item())
    assert r["mean_bitops"] == pytest.approx(r["bitops"].double().mean().item())
    assert r["min_bitops"] == int(r["bitops"].min()) and r["max_bitops"] == int(r["bitops"].max())
    assert r["mean_fraction"] == pytest.approx(r["mean_bitops"] / r["reference_bitops"])
    assert r["controller_share"] == pytest.approx(r["controller_bitops"] / r["mean_bitops"]) and r["controller_share"] < 0.1
    assert set(r["bits"].unique().tolist()) <= {2, 3, 4}
    for i, name in enumerate(r["layers"]):
        assert r["layer_bits"][name] == pytest.approx(r["bits"][:, i].double().mean().item())
    # every per-sample cost is recomputed from its widths and the layers' MACs
    macs = dyn.layer_macs()
    per = torch.tensor([macs[n] for n in r["layers"]], dtype=torch.int64)
    recomputed = (r["bits"].long() ** 2 * per).sum(1) + r["fixed_bitops"] + r["controller_bitops"]
    assert torch.equal(recomputed, r["bitops"])
    lo, hi = dyn.bitops_range()
    assert lo <= r["mean_fraction"] <= hi
    assert dyn.training is False


def test_works_on_a_model_that_torch_fx_cannot_trace():
    """The split hooks the trunk's output; it does not rewrite the forward, so data-dependent control flow is fine."""

    class Branchy(Toy):
        def forward(self, x):
            h = self.body(self.stem(x))
            if h.sum() > 0:  # fx cannot trace this
                h = h * 1.0
            return self.head(h.mean((2, 3)))

    torch.manual_seed(0)
    m = Branchy().eval()
    x = torch.randn(16, 1, 28, 28)
    with pytest.warns(UserWarning, match="BatchNorm folding is skipped"):
        dyn = prepare(m, DynamicConfig(bits=(2, 4), hidden=8), [x])
    assert dyn.dynamic_layers == ("body.0", "body.2")
    assert dyn.eval()(x).shape == (16, 10)
    assert dyn.lowbit_info["bn_frozen"] == ["stem.1"]
    dyn.train()
    assert dyn.model.body[0].training and not dyn.model.stem[1].training  # unfolded BatchNorm keeps its running statistics


@pytest.mark.parametrize("name,n_dynamic,first,ctrl_share", [("fmnist-resnet", 8, "layers.0.conv1", 0.005),
                                                             ("fmnist-mobilenet", 21, "blocks.0.block.0", 0.05)])
def test_prepare_on_the_zoo_models(fmnist_calib, name, n_dynamic, first, ctrl_share):
    model = load_model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = DynamicConfig(bits=(2, 3, 4, 5, 6), target_bitops=0.5, calib_size=64)
    dyn = prepare(model, cfg, fmnist_calib)
    assert {k: v for k, v in model.state_dict().items()}.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the caller's model is untouched
    assert dyn.trunk == ("stem",) and dyn.classifier == "fc" and dyn.fixed_layers == ("stem.0", "fc")
    assert len(dyn.dynamic_layers) == n_dynamic and dyn.dynamic_layers[0] == first
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dyn.model.modules())
    assert dyn.lowbit_info["calibration_samples"] == 64
    x = fmnist_calib.images[:8]
    with torch.no_grad():
        out = dyn(x)
    assert out.shape == (8, 10) and dyn.last_bits.shape == (8, n_dynamic)
    assert bool(((dyn.last_bitops >= dyn.min_bitops()) & (dyn.last_bitops <= dyn.max_bitops())).all())
    # the float controller: 0.35 % of the 6-bit ResNet; 3.3 % of the (7x cheaper) MobileNet, whose 21 layers x 5 candidates it decides
    assert dyn.controller_bitops() / dyn.reference_bitops() < ctrl_share
    # all dynamic layers at 6 bits: within a few points of the float model's predictions on these images
    dyn.controller = FixedChoice(dyn.controller, torch.full((8, n_dynamic), 4))
    with torch.no_grad():
        agree = (dyn(x).argmax(1) == model(x).argmax(1)).float().mean()
    assert agree >= 0.75


def test_explicit_nested_trunk_on_the_resnet(fmnist_calib):
    dyn = prepare(load_model("fmnist-resnet"), DynamicConfig(trunk=["stem", "layers.0"], target_bitops=0.7, calib_size=16), fmnist_calib)
    # the first residual stage holds ~40 % of the MACs: fixed at 8 bits it puts half the budget out of reach
    assert dyn.bitops_range()[0] > 0.5
    assert dyn.cut == "layers.0" and dyn.dynamic_layers[0] == "layers.1.conv1" and len(dyn.dynamic_layers) == 6
    assert dyn.fixed_layers == ("stem.0", "layers.0.conv1", "layers.0.conv2", "fc")
    assert dyn.controller.trunk_channels == 32


# --------------------------------------------------------------------------- config
def test_config_round_trips_and_normalizes():
    cfg = DynamicConfig(bits=[2, 4, 6], tau=[3, 1], trunk=["stem"], target_bitops=1, controller_lr=1e-3)
    assert cfg.bits == (2, 4, 6) and cfg.tau == (3.0, 1.0) and cfg.trunk == ("stem",) and isinstance(cfg.target_bitops, float)
    assert DynamicConfig.from_yaml(cfg.to_yaml()) == cfg and DynamicConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.kind == "dynamic" and cfg.train_kwargs()["controller_lr"] == 1e-3


@pytest.mark.parametrize("changes,match", [
    ({"bits": []}, "empty"),
    ({"bits": [4, 2, 6]}, "increasing order.*did you mean \\[2, 4, 6\\]"),
    ({"bits": [2, 4, 4]}, "more than once"),
    ({"bits": [0, 2, 4]}, "1..16.*got 0"),
    ({"bits": [2, 4, 17]}, "1..16.*got 17"),
    ({"bits": [2, 4.0]}, "1..16"),
    ({"bits": "2,4"}, "list of candidate"),
    ({"bits": [4]}, "at least two"),
    ({"bits": [2, 8], "target_bitops": 0.05}, "reach: \\[0.0625, 1\\]"),
    ({"target_bitops": 1.5}, "outside what the candidates"),
    ({"target_bitops": 0}, "outside what the candidates"),
    ({"target_bitops": float("nan")}, "outside what the candidates"),
    ({"reg_weight": -1}, "reg_weight"),
    ({"tau": [0.5, 5.0]}, "tau"),
    ({"tau": [1.0]}, "tau"),
    ({"tau": [1.0, 0.0]}, "tau"),
    ({"noise": [1.0, -0.5]}, "noise"),
    ({"noise": 1.0}, "noise"),
    ({"trunk": []}, "trunk"),
    ({"trunk": "stem"}, "trunk"),
    ({"trunk": ["stem", "stem"]}, "more than once"),
    ({"trunk": ["stem", ""]}, "trunk"),
    ({"fixed_bits": 17}, "fixed_bits"),
    ({"fixed_bits": 1}, "fixed_bits must be integer widths in 2..16"),
    ({"observer": "magic"}, "unknown observer"),
    ({"hidden": -1}, "hidden"),
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 1.5}, "batch_size"),
    ({"calib_size": 0}, "calib_size"),
    ({"seed": "0"}, "seed"),
    ({"lr": -1e-3}, "lr"),
    ({"controller_lr": 0}, "controller_lr"),
    ({"distill": "yes"}, "distill"),
    ({"distill_weight": 1.5}, "distill_weight"),
    ({"temperature": 0}, "temperature"),
])
def test_config_errors(changes, match):
    with pytest.raises(ConfigError, match=match):
        DynamicConfig(**changes)


def test_config_from_yaml_rejects_unknown_keys_and_kinds():
    with pytest.raises(ConfigError, match="unknown key 'budget'"):
        DynamicConfig.from_yaml("budget: 0.5")
    with pytest.raises(ConfigError, match="kind 'qat'"):
        DynamicConfig.from_yaml("kind: qat")


# --------------------------------------------------------------------------- prepare / model errors
def test_unknown_trunk_name():
    x = torch.randn(4, 1, 28, 28)
    with pytest.raises(ConfigError, match="unknown trunk module 'steem'.*top-level modules: \\['stem', 'body', 'head'\\]"):
        prepare(toy(), DynamicConfig(trunk=["steem"]), [x])


def test_trunk_that_is_not_a_prefix():
    with pytest.raises(ConfigError, match="'stem.0' runs before the trunk's end \\('body.0'\\)"):
        prepare(toy(), DynamicConfig(trunk=["body.0"]), [torch.randn(4, 1, 28, 28)])


def test_trunk_that_leaves_no_dynamic_layer():
    with pytest.raises(ConfigError, match="only 1 conv / linear layer.*shorter trunk"):
        prepare(toy(), DynamicConfig(trunk=["stem", "body"]), [torch.randn(4, 1, 28, 28)])


def test_trunk_without_weight_layers():
    class ReluFirst(Toy):
        def __init__(self):
            super().__init__()
            self.pre = nn.ReLU()

        def forward(self, x):
            return super().forward(self.pre(x))

    with pytest.raises(ConfigError, match="holds no conv / linear layer"):
        prepare(ReluFirst().eval(), DynamicConfig(trunk=["pre"]), [torch.randn(4, 1, 28, 28)])


def test_default_trunk_that_cannot_serve_says_how_to_pass_one():
    with pytest.raises(ConfigError, match="default trunk \\['flatten', 'fc1', 'relu'\\] cannot serve.*trunk="):
        prepare(FmnistMLP().eval(), DynamicConfig(), [torch.randn(4, 1, 28, 28)])


def test_trunk_output_that_is_not_a_feature_map():
    class TupleStem(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y, y.shape

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.c2, self.fc = TupleStem(), nn.Conv2d(4, 4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.c2(self.stem(x)[0]).mean((2, 3)))

    with pytest.raises(ConfigError, match="outputs tuple.*controller needs a \\[batch, channels"):
        prepare(Net().eval(), DynamicConfig(), [torch.randn(2, 1, 12, 12)])


def test_target_unreachable_on_the_model():
    x = torch.randn(8, 1, 28, 28)
    lo = toy_dyn(bits=(2, 4, 8))[0].bitops_range()[0]  # the fixed stem / head and the controller lift it above (2/8)^2
    assert lo > (2 / 8) ** 2
    with pytest.raises(ConfigError, match="outside what the candidates \\[2, 4, 8\\] can reach on this model: \\[0\\.\\d+, 1\\.\\d+\\]"):
        prepare(toy(), DynamicConfig(bits=(2, 4, 8), target_bitops=(lo + (2 / 8) ** 2) / 2, hidden=8), [x])


def test_shared_and_unsupported_layers_and_quantized_models():
    class Shared(Toy):
        def forward(self, x):
            h = self.body[0](self.stem(x))
            return self.head(self.body[0](torch.relu(h)[:, :4]).mean((2, 3)))

    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(UnsupportedError, match="runs 2 times per forward"):
        prepare(Shared().eval(), DynamicConfig(), [x])

    class WithConv1d(Toy):
        def __init__(self):
            super().__init__()
            self.c1d = nn.Conv1d(16, 16, 1)

        def forward(self, x):
            h = self.body(self.stem(x))
            return self.head(self.c1d(h.flatten(2)).mean(2))

    with pytest.raises(UnsupportedError, match="'c1d' is a Conv1d"):
        prepare(WithConv1d().eval(), DynamicConfig(), [x])
    import lowbit

    q = lowbit.quantize_(toy(), lowbit.load_recipe("w8a8"), data=[x])
    with pytest.raises(UnsupportedError, match="already quantized"):
        prepare(q, DynamicConfig(), [x])


def test_prepare_needs_data_and_a_dynamic_config():
    with pytest.raises(CalibrationError):
        prepare(toy(), DynamicConfig(), None)
    with pytest.raises(CalibrationError):
        prepare(toy(), DynamicConfig(), [])
    with pytest.raises(ConfigError, match="DynamicConfig"):
        prepare(toy(), lowbit_ptq(), [torch.randn(2, 1, 28, 28)])


def lowbit_ptq():
    import lowbit

    return lowbit.PTQConfig()


def test_layer_errors():
    x = torch.rand(3, 12)
    layer = DynamicQuantLinear(nn.Linear(12, 4), bits=(2, 4))
    with pytest.raises(CalibrationError, match="calibrate it first"):
        layer(x, F.one_hot(torch.zeros(3, dtype=torch.long), 2).float())
    calibrated(layer, x)
    with pytest.raises(ConfigError, match="got no selection"):
        layer(x)
    with pytest.raises(ConfigError, match="shape \\[batch, K\\] = \\[3, 2\\]"):
        layer(x, torch.ones(3, 3))
    with pytest.raises(UnsupportedError, match="nn.Linear"):
        DynamicQuantLinear(nn.Conv2d(1, 1, 1), bits=(2, 4))
    with pytest.raises(UnsupportedError, match="padding_mode"):
        DynamicQuantConv2d(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), bits=(2, 4))
    with pytest.raises(ConfigError, match="increasing"):
        DynamicQuantLinear(nn.Linear(2, 2), bits=(4, 2))
    fresh = DynamicQuantLinear(nn.Linear(12, 4), bits=(2, 4))
    fresh.start_observing()
    with pytest.raises(CalibrationError, match="saw no input"):
        fresh.finish_observing()


def test_train_dynamic_errors():
    dyn, x = toy_dyn(bits=(2, 4, 8))
    y = torch.randint(0, 10, (x.shape[0],))
    with pytest.raises(ConfigError, match="can reach on this model"):
        train_dynamic(dyn, (x, y), target_bitops=0.01, progress=False)
    with pytest.raises(ConfigError, match="tau"):
        train_dynamic(dyn, (x, y), tau=(0.5, 2.0), progress=False)
    for bad in ((1.0, float("nan")), (-1.0, 0.0), 1.0):
        with pytest.raises(ConfigError, match="noise"):
            train_dynamic(dyn, (x, y), noise=bad, progress=False)
    with pytest.raises(ConfigError, match="needs labels"):
        train_dynamic(dyn, x, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="DynamicQuantModel"):
        train_dynamic(toy(), (x, y), progress=False)
    with pytest.raises(ConfigError, match="epochs"):
        train_dynamic(dyn, (x, y), epochs=0, progress=False)
    with pytest.raises(ConfigError, match="labelled"):
        evaluate_dynamic(dyn, [x])


def test_a_trained_model_can_be_copied_and_evaluated_without_gradients_kept():
    dyn, x = toy_dyn(n=32)
    y = torch.randint(0, 10, (32,))
    train_dynamic(dyn, (x, y), epochs=1, batch_size=16, target_bitops=0.5, progress=False)
    assert dyn.last_probs.grad_fn is None
    dup = copy.deepcopy(dyn)
    dyn(x)  # eval mode with autograd on: the stored probabilities hold no graph either
    assert dyn.last_probs.grad_fn is None
    with torch.no_grad():
        torch.testing.assert_close(dup(x), dyn(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- save / load, recipes, public API
def test_save_load_round_trip_is_bit_identical(tmp_path):
    from lowbit.algorithms.dynamic import load_dynamic, read_manifest, save_dynamic

    dyn, x = toy_dyn(n=64)
    train_dynamic(dyn, (x, torch.randint(0, 10, (64,))), epochs=1, lr=1e-3, batch_size=32, target_bitops=0.5, progress=False)
    signed = {n: m.input_signed for n, m in dyn.model.named_modules() if hasattr(m, "input_signed")}
    assert signed == {"stem.0": True, "body.0": False, "body.2": False, "head": False}  # both grid sides are exercised
    path = tmp_path / "toy.safetensors"
    info = save_dynamic(dyn, path, model_spec="toy")
    assert info["layers"] == 4 and info["bytes"] == path.stat().st_size
    m = read_manifest(path)
    assert m["input_signed"] == signed and m["trunk"] == ["stem"] and m["config"]["kind"] == "dynamic" and m["model"] == "toy"
    dyn2 = load_dynamic(path, model=toy(seed=5))  # another initialization: every value comes from the file
    assert isinstance(dyn2, DynamicQuantModel) and not dyn2.training
    assert {n: mm.input_signed for n, mm in dyn2.model.named_modules() if hasattr(mm, "input_signed")} == signed
    xt = torch.randn(48, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(dyn2(xt), dyn(xt), rtol=0, atol=0)
    assert torch.equal(dyn2.last_bits, dyn.last_bits) and torch.equal(dyn2.last_bitops, dyn.last_bitops)
    assert dyn2.summary() == dyn.summary() and dyn2.lowbit_info["config"] == dyn.lowbit_info["config"]
    assert len(set(dyn.last_bits.flatten().tolist())) > 1  # the batch really mixes widths (grouped inference is compared)


def test_load_rejects_missing_foreign_corrupt_and_mismatched_files(tmp_path):
    from safetensors.torch import save_file

    import lowbit
    from lowbit.algorithms.dynamic import load_dynamic, save_dynamic
    from lowbit.export import CheckpointError

    dyn, _ = toy_dyn(n=16)
    good = tmp_path / "good.safetensors"
    save_dynamic(dyn, good)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_dynamic(tmp_path / "none.safetensors", model=toy())
    (tmp_path / "junk.bin").write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match="not a lowbit dynamic model"):
        load_dynamic(tmp_path / "junk.bin", model=toy())
    save_file({"w": torch.zeros(3)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="no lowbit_dynamic_format"):
        load_dynamic(tmp_path / "foreign.safetensors", model=toy())
    packed = tmp_path / "mlp.lowbit"
    lowbit.save(lowbit.quantize_(FmnistMLP(), lowbit.load_recipe("w8a8"), data=[torch.randn(8, 1, 28, 28)]), packed)
    with pytest.raises(CheckpointError, match="load it with lowbit.load$"):
        load_dynamic(packed, model=toy())
    with pytest.raises(CheckpointError, match="load it with lowbit.load_dynamic"):
        lowbit.load(good, model=toy())
    raw = bytearray(good.read_bytes())
    raw[-3] ^= 0xFF  # a flipped bit in the last tensor's bytes
    (tmp_path / "tampered.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_dynamic(tmp_path / "tampered.safetensors", model=toy())
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated|not a lowbit dynamic model"):
        load_dynamic(tmp_path / "cut.safetensors", model=toy())
    with pytest.raises(CheckpointError, match="records no model spec"):
        load_dynamic(good)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_dynamic(good, model=FmnistMLP())


@pytest.mark.parametrize("name,bits,target", [("dynamic-b23456", (2, 3, 4, 5, 6), 0.5), ("dynamic-b468", (4, 6, 8), 0.5),
                                              ("dynamic-b1234", (1, 2, 3, 4), 0.19)])
def test_recipes_load_as_dynamic_configs_reachable_on_the_resnet(fmnist_calib, name, bits, target):
    import lowbit

    cfg = lowbit.load_recipe(name)
    assert isinstance(cfg, DynamicConfig) and cfg.bits == bits and cfg.target_bitops == target and cfg.description
    assert cfg.noise == (1.0, 0.0) and cfg.batch_size == 64
    assert name in lowbit.list_recipes()
    dyn = prepare(load_model("fmnist-resnet"), cfg.replace(calib_size=16), fmnist_calib)  # prepare checks the target exactly
    lo, hi = dyn.bitops_range()
    assert lo < cfg.target_bitops < hi


def test_public_api_and_quantize_points_to_the_dynamic_verb():
    import lowbit

    assert lowbit.prepare_dynamic is prepare and lowbit.train_dynamic is train_dynamic and lowbit.evaluate_dynamic is evaluate_dynamic
    assert lowbit.DynamicConfig is DynamicConfig and lowbit.DynamicQuantModel is DynamicQuantModel
    with pytest.raises(ConfigError, match="call lowbit.prepare_dynamic\\(model, config, data\\)"):
        lowbit.quantize_(toy(), DynamicConfig(), data=[torch.randn(2, 1, 28, 28)])


def test_hidden_zero_is_a_static_choice_shared_by_every_sample(fmnist_calib):
    torch.manual_seed(0)
    model = load_model("fmnist-resnet")
    dyn = prepare(model, DynamicConfig(bits=(1, 2, 4), hidden=0, target_bitops=0.3), fmnist_calib)
    assert dyn.controller.macs() == 0 and dyn.controller_bitops() == 0
    with torch.no_grad():
        dyn.controller.static_logits.copy_(torch.randn_like(dyn.controller.static_logits))
    dyn.eval()(fmnist_calib.images[:32])
    assert (dyn.last_bits == dyn.last_bits[0]).all()  # the same widths for every input
    assert (dyn.last_bitops == dyn.last_bitops[0]).all()


def test_controller_grid_pools_a_coarse_map_counts_its_cost_and_survives_save_load(fmnist_calib, tmp_path):
    from lowbit.algorithms.dynamic import load_dynamic, save_dynamic

    torch.manual_seed(0)
    dyn = prepare(load_model("fmnist-resnet"), DynamicConfig(bits=(1, 2, 4), hidden=8, grid=2, target_bitops=0.4), fmnist_calib)
    c = dyn.controller
    assert c.features == 4 * c.trunk_channels and c.macs() == 4 * c.trunk_channels * 8 + 8 * len(dyn.dynamic_layers) * 3
    assert c.feature_std.shape == (4 * c.trunk_channels,)
    x = fmnist_calib.images[:16]
    h = dyn.model.stem(x)
    torch.testing.assert_close(c.pool(h)[:, :: 4], h[:, :, :14, :14].mean((2, 3)))  # region (0, 0) of every channel
    dyn.eval()(x)
    path = tmp_path / "g.safetensors"
    save_dynamic(dyn, path, model_spec="fmnist-resnet")
    back = load_dynamic(path)
    assert back.controller.grid == 2 and torch.equal(back(x), dyn(x))


def test_controller_grid_on_features_without_a_map():
    from lowbit.algorithms.dynamic import BitController

    ctrl = BitController(16, 3, 2, hidden=4, grid=2)
    for h in (torch.rand(2, 16), torch.rand(2, 16, 1, 5)):
        with pytest.raises(ConfigError, match="grid of 2x2 needs"):
            ctrl(h)
    with pytest.raises(ConfigError, match="grid must be a positive integer"):
        DynamicConfig(grid=0)

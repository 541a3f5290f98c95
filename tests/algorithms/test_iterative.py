"""Iterative adaptation to quantization noise: quality against plain PTQ, the freezing schedule, final
state of the quantizers, config validation and recipes."""

import copy
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.algorithms.iterative import IterativeConfig, quantizers_disabled, refine
from lowbit.errors import ConfigError, UnsupportedError
from lowbit.nn import ActQuant
from lowbit.nn.layers import is_quant_module
from lowbit.nn.quantizers import WeightQuant
from lowbit.quant import fake_quantize
from lowbit.zoo import load_model

RECIPES = Path(lowbit.__file__).parent / "recipes"
FAST = {"calib_size": 128, "epochs_per_step": 2, "lr": 2e-4, "batch_size": 32}  # a few seconds on one core


def _iterative(recipe: str, **changes) -> IterativeConfig:
    d = lowbit.load_recipe(recipe).to_dict()
    d.pop("kind")
    d.update(changes)
    return IterativeConfig.from_dict(d)


def _output_mse(model, ref, x) -> float:
    with torch.no_grad():
        return float(((model(x) - ref) ** 2).mean())


@pytest.fixture(scope="module")
def resnet():
    return load_model("fmnist-resnet")


@pytest.fixture(scope="module")
def adapted(resnet, fmnist_calib):
    """W4A4 iterative on the ResNet (block schedule), recording what each training phase was given and
    which layers' weights or biases it changed."""
    layers: dict = {}
    phases: list = []
    real_train, real_schedule = refine._train, refine.build_schedule

    def spy_train(net, trained, *args, **kwargs):
        before = {n: [p.detach().clone() for p in m.parameters(recurse=False)] for n, m in layers.items()}
        out = real_train(net, trained, *args, **kwargs)
        changed = {n for n, m in layers.items() if any(not torch.equal(p, b) for p, b in zip(m.parameters(recurse=False), before[n], strict=True))}
        phases.append(({n for n, m in layers.items() if any(m is t for t in trained)}, changed))
        return out

    def spy_schedule(model, *args, **kwargs):
        layers.update({n: m for n, m in model.named_modules() if is_quant_module(m)})
        return real_schedule(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(refine, "_train", spy_train)
        mp.setattr(refine, "build_schedule", spy_schedule)
        q = lowbit.quantize_(copy.deepcopy(resnet), _iterative("w4a4", **FAST), data=fmnist_calib)
    return q, layers, phases


def test_output_mse_on_held_out_images_is_below_plain_ptq(resnet, adapted, fmnist_calib, fmnist_small_test):
    x = fmnist_small_test.images[:256]
    with torch.no_grad():
        ref = resnet(x)
    ptq = lowbit.quantize_(copy.deepcopy(resnet), lowbit.load_recipe("w4a4").replace(calib_size=FAST["calib_size"]), data=fmnist_calib)
    q = adapted[0]
    mse_ptq, mse_it = _output_mse(ptq, ref, x), _output_mse(q, ref, x)
    assert mse_it < 0.7 * mse_ptq, (mse_it, mse_ptq)
    info = q.lowbit_info["iterative"]
    assert info["mse"] < 0.5 * info["mse_ptq"] and info["samples"] == FAST["calib_size"]
    # one step per residual block; the pooling quantizers join the block whose add feeds them
    assert [s["quantized"][-1] for s in info["steps"]] == ["lowbit_add_0", "lowbit_add_1", "lowbit_pool_0_out", "fc"]


def test_layers_are_frozen_once_quantized(adapted):
    """Every training phase changes only the layers it was given, and those are exactly the layers of
    the later steps: a layer is never trained after the step that quantized it."""
    q, layers, phases = adapted
    steps = q.lowbit_info["iterative"]["steps"]
    assert len(phases) == len(steps) - 1 == 3  # the last step quantizes fc and has nothing left to train
    for k, (trained, changed) in enumerate(phases):
        assert trained == {n for s in steps[k + 1 :] for n in s["quantized"] if n in layers}
        assert changed and changed <= trained
    assert steps[-1]["trained_layers"] == 0 and steps[-1]["loss"] == []


def _quantizers(model):
    return [m for m in model.modules() if isinstance(m, WeightQuant | ActQuant)]


def test_all_quantizers_enabled_at_the_end(adapted, fmnist_calib):
    q = adapted[0]
    quantizers = _quantizers(q)
    assert quantizers and all("forward" not in m.__dict__ for m in quantizers)  # nothing left pass-through
    assert all(a.calibrated for a in lowbit.activation_quantizers(q))
    assert all(p.requires_grad for p in q.parameters())  # flags restored
    # weight qparams follow the trained weights: re-quantizing a quantized weight changes nothing
    for m in q.modules():
        if is_quant_module(m):
            wq = m.weight_quant
            w = m.quantized_weight().detach()
            assert torch.equal(fake_quantize(w, wq.scale, wq.zero_point, wq.spec.format, wq.spec.granularity), w)
    x = fmnist_calib.images[:16]
    with quantizers_disabled(q):
        float_out = q(x)
    assert not torch.equal(q(x), float_out)


@pytest.mark.parametrize("granularity", ["block", "layer"])
def test_frozen_prefix_cache_computes_the_same_function(resnet, fmnist_calib, granularity):
    """Training reuses the frozen part's outputs (computed once per step) and runs only the later
    layers on them: bit-identical to running the whole partially quantized model."""
    x = fmnist_calib.images[:64]
    q = lowbit.quantize_(copy.deepcopy(resnet), lowbit.load_recipe("w4a4"), data=[x])
    steps = refine.build_schedule(q, x[:8], granularity, 4)
    for k in range(len(steps) - 1):
        later = steps[k + 1 :]
        with quantizers_disabled([m for s in later for m in s.quantizers]):
            net = refine._Network(q, x, live={n for s in later for n in s.names})
            with torch.no_grad():
                expected = q(x)
            assert net.suffix is not None and torch.equal(net.outputs(), expected)
            assert torch.equal(net(torch.tensor([3, 1])), expected[[3, 1]])


def test_refiner_restores_mode_and_requires_grad_flags():
    torch.manual_seed(0)
    data = [torch.randn(32, 1, 28, 28)]
    cfg = IterativeConfig(granularity="layer", epochs_per_step=1)
    q = lowbit.quantize_(load_model("fmnist-mlp"), lowbit.PTQConfig(), data=data)
    q.train(True)
    q.fc1.bias.requires_grad_(False)
    refine.refine_iterative(q, cfg, data)
    assert q.training and not q.fc1.bias.requires_grad and q.fc1.weight.requires_grad and q.fc2.weight.requires_grad


def test_quantizers_disabled_restores_after_an_exception():
    model = lowbit.quantize_(load_model("fmnist-mlp"), lowbit.load_recipe("w4a4"), data=[torch.randn(16, 1, 28, 28)])
    x = torch.randn(4, 1, 28, 28)
    expected = model(x)
    with pytest.raises(RuntimeError, match="boom"), quantizers_disabled(model) as patched:
        assert len(patched) == 4  # two layers: weight + input quantizer each
        raise RuntimeError("boom")
    assert torch.equal(model(x), expected)
    inner = [model.fc1.weight_quant]
    with quantizers_disabled(model), quantizers_disabled(inner) as patched:
        assert patched == []  # already pass-through: the outer block owns it
    assert torch.equal(model(x), expected)


def test_mlp_layer_schedule_trains_the_last_layer_only():
    torch.manual_seed(0)
    model = load_model("fmnist-mlp")
    data = [torch.randn(64, 1, 28, 28)]
    fc1 = model.fc1.weight.detach().clone()
    fc2 = model.fc2.weight.detach().clone()
    cfg = IterativeConfig(granularity="layer", epochs_per_step=2, lr=1e-3, weight=lowbit.load_recipe("w4a4").weight)
    q = lowbit.quantize_(model, cfg, data=data)
    assert [s["quantized"] for s in q.lowbit_info["iterative"]["steps"]] == [["fc1"], ["fc2"]]
    assert torch.equal(q.fc1.weight, fc1) and not torch.equal(q.fc2.weight, fc2)
    # granularity: block on a model without residual adds groups block_size layers per step
    q2 = lowbit.quantize_(load_model("fmnist-mlp"), cfg.replace(granularity="block", block_size=2), data=data)
    assert [s["quantized"] for s in q2.lowbit_info["iterative"]["steps"]] == [["fc1", "fc2"]]


@pytest.mark.parametrize("recalibrate", [True, False])
def test_recalibration_re_observes_only_the_quantizers_not_yet_enabled(recalibrate):
    torch.manual_seed(0)
    data = [torch.randn(64, 1, 28, 28)]
    base = lowbit.PTQConfig(activation=lowbit.load_recipe("w4a4").activation)
    ptq = lowbit.quantize_(load_model("fmnist-mlp"), base, data=data)
    cfg = IterativeConfig(granularity="layer", epochs_per_step=1, recalibrate=recalibrate, activation=base.activation)
    q = lowbit.quantize_(load_model("fmnist-mlp"), cfg, data=data)
    # fc1 is enabled first: its input range is the one from the initial calibration
    assert torch.equal(q.fc1.input_quant.scale, ptq.fc1.input_quant.scale)
    # fc2's input now comes from the quantized fc1: observed again, or kept
    assert torch.equal(q.fc2.input_quant.scale, ptq.fc2.input_quant.scale) is not recalibrate


def test_model_with_tuple_output_is_rejected():
    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x), x

    with pytest.raises(UnsupportedError, match="one float tensor"):
        lowbit.quantize_(Pair(), IterativeConfig(), data=[torch.randn(8, 4)])


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"granularity": "network"}, "granularity"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"loss": "kl"}, "loss"),
        ({"epochs_per_step": -1}, "epochs_per_step"),
        ({"epochs_per_step": 1.5}, "epochs_per_step"),
        ({"final_epochs": True}, "final_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"block_size": 0}, "block_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"recalibrate": "yes"}, "recalibrate"),
        ({"calib_size": 0}, "calib_size"),
    ],
)
def test_invalid_fields_raise_config_error(changes, match):
    with pytest.raises(ConfigError, match=match):
        IterativeConfig(**changes)


def test_yaml_round_trip_and_lr_written_without_a_dot():
    cfg = IterativeConfig.from_yaml("granularity: layer\nlr: 1e-3\nepochs_per_step: 3\nactivation: {bits: 4, signed: false, mapping: affine}\n")
    assert cfg.lr == 1e-3 and cfg.granularity == "layer" and cfg.activation.bits == 4
    assert IterativeConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ConfigError, match="lr"):
        IterativeConfig.from_yaml("lr: fast\n")
    with pytest.raises(ConfigError, match="does not match"):
        IterativeConfig.from_yaml("kind: ptq\n")


@pytest.mark.parametrize(("name", "weight_bits", "act_bits"), [("w4a4-iterative", 4, 4), ("w2a8-iterative", 2, 8), ("w2a4-iterative", 2, 4)])
def test_recipes_load_as_iterative_configs(name, weight_bits, act_bits):
    cfg = IterativeConfig.from_yaml((RECIPES / f"{name}.yaml").read_text())
    assert cfg.weight.bits == weight_bits and cfg.activation.bits == act_bits and cfg.description
    assert {o.select.position for o in cfg.overrides} == {"first", "last"}
    assert all(o.weight.bits == 8 for o in cfg.overrides)
    assert IterativeConfig.from_yaml(cfg.to_yaml()) == cfg

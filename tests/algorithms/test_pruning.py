"""Pruning: masks and schedules (unstructured), channel groups and physical removal (structured)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.algorithms.pruning import gradual_sparsity, magnitude_masks, pruning_sensitivity
from lowbit.algorithms.pruning.structured import channel_groups, output_layers
from lowbit.errors import ConfigError, SelectorError, UnsupportedError
from lowbit.report.metrics import layer_macs
from lowbit.zoo.models import FmnistMLP, FmnistMobileNet, FmnistResNet

X = torch.rand(32, 1, 28, 28)
Y = torch.randint(0, 10, (32,))


def _resnet(width: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    m = FmnistResNet(width=width)
    with torch.no_grad():  # non-trivial BN statistics, so folding / removing channels is visible
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
    return m.eval()


# ---------------------------------------------------------------- unstructured


@given(st.integers(1, 200), st.floats(0, 0.99))
@settings(max_examples=40, deadline=None)
def test_layer_masks_remove_exactly_round_s_n(n, s):
    w = torch.randn(n)
    mask = magnitude_masks({"w": w}, s)["w"]
    assert int((~mask).sum()) == int(round(s * n))
    if (~mask).any() and mask.any():  # every removed weight is no larger than every kept one
        assert float(w.abs()[~mask].max()) <= float(w.abs()[mask].min())


def test_global_masks_share_one_threshold():
    w = {"a": torch.tensor([0.1, 0.2, 5.0, 6.0]), "b": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    m = magnitude_masks(w, 0.5, "global")
    assert m["a"].tolist() == [False, False, True, True] and m["b"].tolist() == [False, False, True, True]
    m = magnitude_masks(w, 0.25, "global")
    assert int((~m["a"]).sum()) == 2 and int((~m["b"]).sum()) == 0


def test_gradual_schedule_is_monotone_and_reaches_the_target():
    vals = [gradual_sparsity(t, 100, 0.9, ramp=0.6) for t in range(101)]
    assert vals[0] == 0.0 and vals[60] == pytest.approx(0.9) and vals[-1] == pytest.approx(0.9)
    assert all(b >= a for a, b in zip(vals, vals[1:], strict=False))


def test_oneshot_prune_zeroes_exactly_and_leaves_a_plain_model():
    torch.manual_seed(0)
    m = FmnistMLP()
    ref = copy.deepcopy(m)
    lowbit.prune(m, lowbit.PruneConfig(sparsity=0.75), progress=False)
    info = m.lowbit_info
    assert info["sparsity"]["layers"]["fc1"] == pytest.approx(0.75, abs=1e-4)
    assert not hasattr(m.fc1, "weight_mask") and isinstance(m.fc1.weight, torch.nn.Parameter)
    kept = m.fc1.weight != 0  # the kept weights are the original ones, untouched
    assert torch.equal(m.fc1.weight[kept], ref.fc1.weight[kept])


@pytest.mark.parametrize("schedule", ["iterative", "gradual"])
def test_scheduled_pruning_during_fine_tuning_reaches_the_target(schedule):
    torch.manual_seed(0)
    m = FmnistMLP(hidden=32)
    cfg = lowbit.PruneConfig(sparsity=0.8, scope="global", schedule=schedule, epochs=2, batch_size=8, update_every=2, steps=2,
                             lr=1e-3, distill=True)
    lowbit.prune(m, cfg, data=(X, Y), progress=False)
    assert m.lowbit_info["sparsity"]["total"] == pytest.approx(0.8, abs=1e-3)
    assert m.lowbit_info["train"]["history"][-1]["epoch"] == 2


@pytest.mark.parametrize("schedule", ["iterative", "gradual"])
def test_schedule_hook_only_adds_zeros(schedule):
    from lowbit.algorithms.pruning.unstructured import layer_sparsity, schedule_hook

    m = FmnistMLP(hidden=32)
    hook = schedule_hook(m, ["fc1", "fc2"], final=0.9, schedule=schedule, scope="layer", sparsities=None, steps=3,
                         ramp=0.5, update_every=5)
    levels, zero_sets = [], []
    for step in range(40):
        hook(step, 40)
        levels.append(layer_sparsity(m, ["fc1"])["total"])
        zero_sets.append(m.fc1.weight.detach() == 0)
    assert levels[0] < levels[-1] == pytest.approx(0.9, abs=1e-3)
    assert all(b >= a for a, b in zip(levels, levels[1:], strict=False))
    assert all(bool((b | ~a).all()) for a, b in zip(zero_sets, zero_sets[1:], strict=False))  # once zero, always zero


def test_masks_block_the_gradient_of_pruned_weights():
    from lowbit.algorithms.pruning.unstructured import prune_to

    m = FmnistMLP(hidden=16)
    prune_to(m, ["fc1"], 0.5, "layer")
    m(X).sum().backward()
    assert bool((m.fc1.weight_orig.grad[m.fc1.weight_mask == 0] == 0).all())


def test_prune_config_errors():
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        lowbit.PruneConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        lowbit.PruneConfig(sparsity=-0.1)
    with pytest.raises(ConfigError, match="epochs >= 1"):
        lowbit.PruneConfig(schedule="gradual")
    with pytest.raises(ConfigError, match="scope: layer"):
        lowbit.PruneConfig(scope="global", sparsities={"fc1": 0.5})
    with pytest.raises(ConfigError, match="pass data="):
        lowbit.prune(FmnistMLP(), lowbit.PruneConfig(epochs=1), progress=False)
    with pytest.raises(ConfigError, match="not pruned here"):
        lowbit.prune(FmnistMLP(), lowbit.PruneConfig(sparsities={"nope": 0.5}), progress=False)
    with pytest.raises(SelectorError):
        lowbit.prune(FmnistMLP(), lowbit.PruneConfig(exclude=(lowbit.Select(name="nope"),)), progress=False)
    with pytest.raises(ConfigError, match="PruneConfig or StructuredPruneConfig"):
        lowbit.prune(FmnistMLP(), lowbit.PTQConfig())


def test_quantize_points_to_the_prune_verb():
    with pytest.raises(ConfigError, match="lowbit.prune"):
        lowbit.quantize_(FmnistMLP(), lowbit.PruneConfig())


# ---------------------------------------------------------------- structured


def test_groups_couple_residual_channels_and_skip_the_output_layer():
    m = _resnet()
    x = torch.zeros(1, 1, 28, 28)
    assert output_layers(m, x) == ["fc"]
    _, groups = channel_groups(m, x)
    by_root = {g.root: g for g in groups}
    # stage 0 has an identity shortcut: the stem and layers.0.conv2 share their channels
    assert set(by_root["stem.0"].outs) == {"stem.0", "layers.0.conv2"}
    assert "fc" in by_root["layers.2.shortcut.0"].ins
    assert all("fc" not in g.outs for g in groups)


@pytest.mark.parametrize("criterion", ["l1", "apoz", "entropy", "taylor"])
def test_structured_prune_shrinks_the_model_and_counts_macs_exactly(criterion):
    m = _resnet()
    lowbit.prune(m, lowbit.StructuredPruneConfig(criterion=criterion, ratio=0.5), data=(X, Y), progress=False)
    info = m.lowbit_info
    assert info["macs_after"] == info["macs_planned"] < info["macs_before"]
    assert info["parameters_after"] < info["parameters_before"]
    assert m.stem[0].out_channels == 4 and m.layers[0].conv1.out_channels == 4
    assert m(X).shape == (32, 10)


def test_mac_ratio_is_met_on_resnet_and_mobilenet():
    for model in (_resnet(), FmnistMobileNet().eval()):
        lowbit.prune(model, lowbit.StructuredPruneConfig(mac_ratio=0.5), example=X[:1], progress=False)
        assert model.lowbit_info["mac_ratio"] <= 0.5
        assert model.lowbit_info["mac_ratio"] > 0.4  # the bisection does not overshoot by much
        assert model(X).shape == (32, 10)


def test_removing_dead_channels_leaves_the_function_unchanged():
    m = _resnet()
    with torch.no_grad():  # channels 0 and 3 of layers.0.conv1 produce relu(0) = 0 everywhere
        for c in (0, 3):
            m.layers[0].bn1.weight[c] = 0.0
            m.layers[0].bn1.bias[c] = -1.0
    ref = copy.deepcopy(m)
    cfg = lowbit.StructuredPruneConfig(criterion="apoz", ratios={"layers.0.conv1": 0.25}, ratio=0.0)
    lowbit.prune(m, cfg, data=(X, Y), progress=False)
    removed = {g["root"]: g["removed"] for g in m.lowbit_info["groups"]}
    assert removed["layers.0.conv1"] == [0, 3]
    torch.testing.assert_close(m(X), ref(X), rtol=1e-5, atol=1e-5)


def test_structured_prune_onnx_export_runs(tmp_path):
    pytest.importorskip("onnxruntime")
    from lowbit.runtime import OrtModel

    m = _resnet()
    lowbit.prune(m, lowbit.StructuredPruneConfig(ratio=0.5), example=X[:1], progress=False)
    path = tmp_path / "pruned.onnx"
    lowbit.export_onnx(m, X[:2], path, precision="fp32")
    out = OrtModel(path).run_numpy(X[:2].numpy())
    torch.testing.assert_close(torch.as_tensor(out), m(X[:2]), rtol=1e-4, atol=1e-4)


def test_structured_errors():
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        lowbit.StructuredPruneConfig(ratio=1.0)
    with pytest.raises(ConfigError, match="mac_ratio"):
        lowbit.StructuredPruneConfig(mac_ratio=1.5)
    with pytest.raises(ConfigError, match="not both"):
        lowbit.StructuredPruneConfig(mac_ratio=0.5, ratios={"stem.0": 0.2})
    with pytest.raises(UnsupportedError, match="predictions"):
        lowbit.prune(_resnet(), lowbit.StructuredPruneConfig(layers=(lowbit.Select(name="fc"),)), example=X[:1], progress=False)
    with pytest.raises(UnsupportedError, match="coupled"):
        lowbit.prune(_resnet(), lowbit.StructuredPruneConfig(layers=(lowbit.Select(name="stem.0"),)), example=X[:1], progress=False)
    with pytest.raises(ConfigError, match="labels"):
        lowbit.prune(_resnet(), lowbit.StructuredPruneConfig(criterion="taylor"), data=X, progress=False)
    with pytest.raises(ConfigError, match="pass data="):
        lowbit.prune(_resnet(), lowbit.StructuredPruneConfig(criterion="apoz"), example=X[:1], progress=False)
    with pytest.raises(ConfigError, match="out of reach"):
        lowbit.prune(_resnet(), lowbit.StructuredPruneConfig(mac_ratio=0.01, max_ratio=0.5), example=X[:1], progress=False)
    with pytest.raises(ConfigError, match="do not address"):
        lowbit.prune(_resnet(), lowbit.StructuredPruneConfig(ratios={"layers.0.conv2": 0.5}), example=X[:1], progress=False)
    with pytest.raises(ConfigError, match="example="):
        lowbit.prune(_resnet(), lowbit.StructuredPruneConfig(), progress=False)


def test_unprunable_layers_skipped_by_policy_are_reported():
    cfg = lowbit.StructuredPruneConfig(layers=(lowbit.Select(name="fc"), lowbit.Select(name="layers.0.conv1")), on_unprunable="skip")
    m = lowbit.prune(_resnet(), cfg, example=X[:1], progress=False)
    assert [s["layer"] for s in m.lowbit_info["skipped"]][0] == "fc"
    assert [g["root"] for g in m.lowbit_info["groups"]] == ["layers.0.conv1"]


def test_sensitivity_scan_structure():
    m = _resnet()
    r = pruning_sensitivity(m, [(X, Y)], structured=True, ratios=(0.5,), progress=False)
    assert r["baseline"] == lowbit.evaluate(m, [(X, Y)])
    assert set(r["layers"]) == {g.root for g in channel_groups(copy.deepcopy(m), X[:1])[1]}
    u = pruning_sensitivity(m, [(X, Y)], ratios=(0.0, 0.9), progress=False)
    assert all(v[0.0] == r["baseline"] for v in u["layers"].values())  # pruning nothing changes nothing
    assert sum(layer_macs(m, X[:1]).values()) > 0


def test_latency_bisection_survives_noisy_probes():
    """A fake runtime whose probes are off by up to +-0.1 (as on a busy 2-vCPU VM): the plan keeps close to the
    budget instead of collapsing to the most pruned plan."""
    import random

    from lowbit.algorithms.pruning.structured import plan_keep, pruned_macs

    m = _resnet(width=32)
    _, groups = channel_groups(m, X[:1])
    gscores = {g.root: torch.rand(g.size, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)}
    base = layer_macs(m, X[:1])
    total = sum(base.values())
    rng = random.Random(0)

    def true_ratio(keep):
        return 0.25 + 0.75 * pruned_macs(base, m, groups, keep) / total  # a fixed overhead plus MAC-bound work

    calls = []

    def noisy(keep):
        calls.append(1)
        return true_ratio(keep) + rng.uniform(-0.1, 0.1)

    for seed in range(3):
        rng.seed(seed)
        keep = plan_keep(m, groups, gscores, base, ratio=0.0, ratios={}, mac_ratio=None, max_ratio=0.8, round_to=8,
                         latency_ratio=0.6, measure=noisy)
        floor = plan_keep(m, groups, gscores, base, ratio=0.8, ratios={}, mac_ratio=None, max_ratio=0.8, round_to=8)
        assert 0.45 < true_ratio(keep) <= 0.66, (seed, true_ratio(keep))
        assert keep != floor
    assert len(calls) < 3 * 80  # medians of 3 per distinct plan, cached: well under 3 x (12 + 1 + 4) x ... probes


def test_latency_budget_is_bisected_on_measured_latencies():
    pytest.importorskip("onnxruntime")
    m = _resnet(width=16)
    lowbit.prune(m, lowbit.StructuredPruneConfig(latency_ratio=0.8, latency_batch=4), example=X[:1], progress=False)
    info = m.lowbit_info
    assert info["latency"]["runtime"] == "onnxruntime-cpu" and info["latency"]["ratio"] > 0  # measured, not asserted on
    assert info["macs_after"] <= info["macs_before"] and m(X).shape == (32, 10)  # a tiny net's latency is noise-bound
    with pytest.raises(ConfigError, match="one budget"):
        lowbit.StructuredPruneConfig(latency_ratio=0.5, mac_ratio=0.5)
    with pytest.raises(ConfigError, match="latency_ratio"):
        lowbit.StructuredPruneConfig(latency_ratio=1.0)

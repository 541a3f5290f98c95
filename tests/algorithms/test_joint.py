"""Joint pruning-ratio x bit-width search: measured tables, exact cost model, budget-respecting plans."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

import lowbit
from lowbit.algorithms.mixed_precision.joint import FLOAT, JointReport, _Costs, joint_search, joint_sensitivity
from lowbit.errors import ConfigError
from lowbit.report.metrics import layer_macs
from lowbit.zoo.models import FmnistResNet

X = torch.rand(64, 1, 28, 28)
Y = torch.randint(0, 10, (64,))


@pytest.fixture(scope="module")
def resnet_report():
    torch.manual_seed(0)
    m = FmnistResNet(width=8).eval()
    rep = joint_sensitivity(m, [(X, Y)], ratios=(0.0, 0.5), bits=(4, 8, 32), max_samples=64)
    return m, rep


def test_report_tables_cover_every_group_layer_ratio_and_width(resnet_report):
    m, rep = resnet_report
    assert set(rep.prune) == set(rep.groups) and all(set(v) == {0.0, 0.5} for v in rep.prune.values())
    assert all(v[0.0] == 0.0 for v in rep.prune.values())
    assert set(rep.quant) == set(rep.layers) and all(set(v) == {4, 8, FLOAT} for v in rep.quant.values())
    assert rep.bits == (4, 8, 32)


def test_cost_model_matches_the_pruned_model_exactly(resnet_report):
    """Predicted MACs / weights of a plan equal those counted on the model pruned by plan.prune_config()."""
    m, rep = resnet_report
    costs = _Costs(rep)
    plan_r = {g: (0.5 if i % 2 == 0 else 0.0) for i, g in enumerate(rep.groups)}
    rg = np.array([[rep.ratios.index(plan_r[g]) for g in costs.groups]])
    frac = costs.fractions(rg)[0]
    pruned = copy.deepcopy(m)
    ratios = {g: r for g, r in plan_r.items() if r > 0}
    lowbit.prune(pruned, lowbit.StructuredPruneConfig(ratio=0.0, ratios=ratios, max_ratio=0.95), example=X[:1], progress=False)
    macs = layer_macs(pruned, X[:1])
    for n, f in zip(costs.layers, frac, strict=True):
        assert macs[n] == pytest.approx(rep.macs[n] * f, rel=1e-9)
        assert pruned.get_submodule(n).weight.numel() == pytest.approx(rep.params[n] * f, rel=1e-9)


def test_search_is_optimal_on_a_small_exhaustive_case():
    rep = JointReport(groups={"g1": {"outs": ["a"], "ins": ["b"], "depthwise": [], "size": 8},
                              "g2": {"outs": ["b"], "ins": ["c"], "depthwise": [], "size": 8}},
                      layers=["a", "b", "c"], params={"a": 100, "b": 200, "c": 50}, macs={"a": 10, "b": 20, "c": 5},
                      ratios=(0.0, 0.25, 0.5), bits=(2, 4, 8),
                      prune={"g1": {0.0: 0, 0.25: 0.05, 0.5: 0.2}, "g2": {0.0: 0, 0.25: 0.02, 0.5: 0.3}},
                      quant={"a": {2: 0.5, 4: 0.04, 8: 0}, "b": {2: 0.2, 4: 0.03, 8: 0}, "c": {2: 0.1, 4: 0.01, 8: 0}})
    costs = _Costs(rep)
    budget = 140.0
    best = (np.inf, None)
    for rgi in itertools.product(range(3), repeat=2):
        for bgi in itertools.product(range(3), repeat=3):
            c = costs.evaluate(np.array([rgi]), np.array([bgi]))
            if c["size"][0] <= budget and c["loss"][0] < best[0]:
                best = (c["loss"][0], (rgi, bgi))
    plan = joint_search(rep, {"size": budget}, seed=1)
    assert plan.predicted["size"] <= budget
    assert plan.predicted["loss"] == pytest.approx(best[0])


def test_plan_applies_with_ordinary_configs(resnet_report):
    m, rep = resnet_report
    full = _Costs(rep).evaluate(np.zeros((1, len(rep.groups)), dtype=int), np.full((1, len(rep.layers)), rep.bits.index(8)))
    plan = joint_search(rep, {"size": float(full["size"][0]) * 0.5})
    assert plan.predicted["size"] <= full["size"][0] * 0.5
    pruned = lowbit.prune(copy.deepcopy(m), plan.prune_config(), example=X[:1], progress=False)
    q = lowbit.quantize_(pruned, plan.quant_config(lowbit.load_recipe("w8a8")), data=[X])
    assert q(X).shape == (64, 10)
    widths = {n: mod.weight_quant.spec.format.bits for n, mod in q.named_modules() if getattr(mod, "weight_quant", None) is not None}
    assert all(widths[n] == b for n, b in plan.bits.items() if b != FLOAT and n in widths)


def test_joint_errors(resnet_report):
    _, rep = resnet_report
    with pytest.raises(ConfigError, match="unknown budget"):
        joint_search(rep, {"energy": 1.0})
    with pytest.raises(ConfigError, match="LatencyTable"):
        joint_search(rep, {"latency": 0.01})
    with pytest.raises(ConfigError, match="no candidate fits"):
        joint_search(rep, {"size": 1.0})
    with pytest.raises(ConfigError, match="positive"):
        joint_search(rep, {"size": -5})
    with pytest.raises(ConfigError, match="labelled"):
        joint_sensitivity(FmnistResNet(width=8), [X])
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        joint_sensitivity(FmnistResNet(width=8), [(X, Y)], ratios=(1.0,))

"""Mixed precision: sensitivity estimators (parity with direct computations), exact MILP search
(parity with brute force), plans that quantize as planned, and the error paths."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.algorithms.mixed_precision import SensitivityReport, layer_sensitivity, model_cost, pareto_frontier, search
from lowbit.algorithms.mixed_precision.sensitivity import LayerProbe, _hutchinson
from lowbit.config import Config
from lowbit.errors import CalibrationError, ConfigError
from lowbit.zoo import load_model


def _toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).eval()


def _toy_data(n=64):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g))]


# ---------------------------------------------------------------- reference parity
def test_hutchinson_trace_matches_the_exact_hessian_trace():
    model, data = _toy(), _toy_data()
    probe = LayerProbe(model, lowbit.PTQConfig(), [data[0][0]], (4,))
    x, y = data[0]
    w_tr, _ = _hutchinson(probe, data, n_vectors=400, seed=0)
    for name in probe.layers:
        w0 = probe.mods[name].weight.detach().clone()

        def loss_of(w, name=name):
            m = copy.deepcopy(probe.model)
            del m.get_submodule(name).weight
            m.get_submodule(name).weight = w
            return F.cross_entropy(m(x), y, reduction="sum") / x.shape[0]

        exact = torch.autograd.functional.hessian(loss_of, w0).reshape(w0.numel(), w0.numel()).diagonal().sum()
        assert w_tr[name] * w0.numel() == pytest.approx(float(exact), rel=0.15), name


def test_mse_and_loss_estimators_equal_quantizing_that_layer_alone_with_ptq(fmnist_calib):
    model = load_model("fmnist-mlp")
    x, y = fmnist_calib.images[:256], fmnist_calib.labels[:256]
    base = lowbit.load_recipe("w8a8")
    rep = layer_sensitivity(model, base, [(x, y)], bits=(2, 4), estimators=("mse", "loss"))
    with torch.no_grad():
        ref = model(x)
    for name in rep.layers:
        one = base.replace(layers=(lowbit.Select(name=name),), overrides=(), quantize_adds=False,
                           weight=base.weight.replace(bits=2), activation=None)
        q = lowbit.quantize_(copy.deepcopy(model), one, data=[x])
        with torch.no_grad():
            out = q(x)
        assert rep.weight["mse"][name][2] == pytest.approx(float(((out - ref) ** 2).sum() / (ref**2).sum()), rel=1e-5)
        dl = float(F.cross_entropy(out, y) - F.cross_entropy(ref, y))
        assert rep.weight["loss"][name][2] == pytest.approx(dl, rel=1e-4, abs=1e-6)
    # fewer bits, more damage — for every layer and every estimator
    for est in ("mse", "loss"):
        assert all(rep.weight[est][n][2] > rep.weight[est][n][4] for n in rep.layers)
    assert all(rep.activation["mse"][n][2] > rep.activation["mse"][n][4] for n in rep.layers)


def _random_report(n_layers=4, bits=(2, 4, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = [f"l{i}" for i in range(n_layers)]
    w = {n: {} for n in layers}
    for n in layers:
        v = sorted(torch.rand(len(bits), generator=g).tolist(), reverse=True)
        w[n] = dict(zip(bits, v, strict=True))
    params = {n: int(torch.randint(10, 1000, (1,), generator=g)) for n in layers}
    return SensitivityReport(layers=layers, bits=bits, weight={"mse": w}, params=params,
                             macs={n: int(torch.randint(100, 10_000, (1,), generator=g)) for n in layers})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_milp_equals_brute_force(seed):
    rep = _random_report(seed=seed)
    full = model_cost(rep, {n: (8, 8) for n in rep.layers}, "size")
    budget = 0.45 * full
    plan = search(rep, {"size": budget}, estimator="mse")
    best = None
    for combo in itertools.product(rep.bits, repeat=len(rep.layers)):
        bits = {n: (b, 8) for n, b in zip(rep.layers, combo, strict=True)}
        if model_cost(rep, bits, "size") <= budget:
            s = sum(rep.weight["mse"][n][b] for n, (b, _) in bits.items())
            best = s if best is None or s < best else best
    assert plan.objective == pytest.approx(best, abs=1e-9)
    assert plan.costs["size"] <= budget + 1e-9


def test_two_budgets_and_fixed_layers():
    rep = _random_report(n_layers=5, seed=3)
    pairs = [(b, a) for b in rep.bits for a in (4, 8)]
    rep.activation["mse"] = {n: {2: 0.3, 4: 0.1, 8: 0.0} for n in rep.layers}
    full_bitops = model_cost(rep, {n: (8, 8) for n in rep.layers}, "bitops")
    full_size = model_cost(rep, {n: (8, 8) for n in rep.layers}, "size")
    plan = search(rep, {"size": 0.6 * full_size, "bitops": 0.4 * full_bitops}, estimator="mse", pairs=pairs, fixed={"l0": (8, 8)})
    assert plan.bits["l0"] == (8, 8)
    assert plan.costs["size"] <= 0.6 * full_size and plan.costs["bitops"] <= 0.4 * full_bitops
    frontier = pareto_frontier(rep, "size", [full_size * f for f in (0.2, 0.3, 0.5, 0.8, 1.0)], estimator="mse")
    objs = [p.objective for p in frontier]
    assert objs == sorted(objs, reverse=True) and len(frontier) >= 2  # more budget, less predicted damage


# ---------------------------------------------------------------- plans quantize as planned
def test_plan_to_config_quantizes_each_layer_at_its_width(fmnist_calib):
    model = load_model("fmnist-resnet")
    base = lowbit.load_recipe("w4a8")
    rep = layer_sensitivity(model, base, fmnist_calib.subset(128), bits=(2, 4, 8), estimators=("hessian",), hutchinson_vectors=2)
    assert set(rep.weight["hessian"]) == set(rep.layers) and len(rep.layers) > 5
    uniform4 = model_cost(rep, {n: (4, 8) for n in rep.layers}, "size")
    plan = search(rep, {"size": uniform4}, estimator="hessian", fixed={rep.layers[0]: (8, 8)})
    assert plan.costs["size"] <= uniform4
    assert len({b for b, _ in plan.bits.values()}) > 1  # really mixed
    q = lowbit.quantize_(copy.deepcopy(model), plan.to_config(base), data=fmnist_calib)
    for name, (wb, ab) in plan.bits.items():
        mod = q.get_submodule(name)
        assert mod.weight_quant.spec.bits == wb and mod.input_quant.spec.bits == ab, name
    assert SensitivityReport.from_dict(rep.to_dict()).weight == rep.weight
    assert rep.ranked("hessian")[0][1] >= rep.ranked("hessian")[-1][1]
    assert "| 1 |" in rep.markdown()


# ---------------------------------------------------------------- bad input
def test_unreachable_budget_names_the_smallest_achievable():
    rep = _random_report()
    smallest = model_cost(rep, {n: (2, 8) for n in rep.layers}, "size")
    with pytest.raises(ConfigError, match=f"smallest achievable with these candidates is {smallest:.6g}"):
        search(rep, {"size": smallest * 0.5}, estimator="mse")


@pytest.mark.parametrize("kwargs,match", [
    ({"budget": {"flops": 1}}, "unknown budget metric 'flops'"),
    ({"budget": {"size": -1}}, "positive number"),
    ({"budget": {}}, "budget must be a mapping"),
    ({"budget": {"size": 1e9}, "estimator": "hessian"}, "estimator 'hessian' was not measured"),
    ({"budget": {"size": 1e9}, "pairs": [(3, 8)]}, "W3 was not measured"),
    ({"budget": {"size": 1e9}, "fixed": {"nope": (8, 8)}}, "fixed layer 'nope'"),
    ({"budget": {"latency": 1.0}}, "latency table"),
])
def test_search_errors(kwargs, match):
    kwargs = {"estimator": "mse", **kwargs}
    with pytest.raises(ConfigError, match=match):
        search(_random_report(), kwargs.pop("budget"), **kwargs)


def test_sensitivity_errors():
    model, data = _toy(), _toy_data()
    with pytest.raises(ConfigError, match="unknown sensitivity estimator 'fisher'"):
        layer_sensitivity(model, lowbit.PTQConfig(), data, estimators=("fisher",))
    with pytest.raises(ConfigError, match="integer widths in 1..8"):
        layer_sensitivity(model, lowbit.PTQConfig(), data, bits=(2, 16))
    with pytest.raises(ConfigError, match="base must be a PTQConfig"):
        layer_sensitivity(model, Config(), data)
    with pytest.raises(CalibrationError, match="empty"):
        layer_sensitivity(model, lowbit.PTQConfig(), [])
    with pytest.raises(CalibrationError, match="NaN"):
        layer_sensitivity(model, lowbit.PTQConfig(), [torch.full((4, 6), float("nan"))])
    with pytest.raises(ConfigError, match="needs a weight spec"):
        layer_sensitivity(model, lowbit.PTQConfig(weight=None), data)

"""Hardware-aware mixed precision: the latency table's additive model, its machine / model checks,
the runtime's executable candidates, and the MILP under a measured latency budget."""

import json

import pytest
import torch

import lowbit
from lowbit.algorithms.mixed_precision import SensitivityReport, search
from lowbit.algorithms.mixed_precision.latency import (
    LatencyTable,
    LatencyTableMismatch,
    cached_latency_table,
    kernel_of,
    machine_fingerprint,
    measure_latency_table,
    measure_plan_latency,
    quantized_model_key,
    unsupported_pairs,
)
from lowbit.errors import ConfigError, UnsupportedError
from lowbit.zoo.models import FmnistMLP


def _table(**kw):
    d = dict(model_key="k", machine=machine_fingerprint(2), batch=1, threads=2, int8_seconds=1e-3, float_seconds=3e-3,
             layers={"a": 1e-3, "b": 0.2e-3, "c": 0.5e-3})
    d.update(kw)
    return LatencyTable(**d)


def _rep():
    w = {"a": {4: 1.0, 8: 0.1}, "b": {4: 0.2, 8: 0.05}, "c": {4: 3.0, 8: 0.5}}
    return SensitivityReport(layers=["a", "b", "c"], bits=(4, 8), params={"a": 10, "b": 10, "c": 10}, macs={"a": 1, "b": 1, "c": 1},
                             weight={"mse": w})


def test_kernel_of_maps_widths_to_what_ort_runs():
    assert kernel_of((2, 8)) == kernel_of((8, 4)) == "int8"
    assert kernel_of((32, 32)) == kernel_of((4, 32)) == kernel_of((32, 8)) == "float"
    with pytest.raises(UnsupportedError, match="16-bit weights"):
        kernel_of((16, 8))
    assert unsupported_pairs([(4, 8), (8, 16), (32, 32)]) == [(8, 16)]


def test_costs_sum_to_the_additive_prediction():
    t = _table()
    plan = {"a": (32, 32), "b": (4, 8), "c": (32, 32)}
    assert t.predict(plan) == pytest.approx(1e-3 + 1e-3 + 0.5e-3)
    assert t.predict({n: (8, 8) for n in "abc"}) == pytest.approx(t.int8_seconds)
    assert sum(t.cost(n, p) for n, p in plan.items()) == pytest.approx(t.predict(plan))
    with pytest.raises(ConfigError, match="no width for layer"):
        t.predict({"a": (8, 8)})


def test_search_under_a_latency_budget_equals_brute_force():
    import itertools

    rep, t = _rep(), _table()
    pairs = [(4, 8), (8, 8), (32, 32)]
    for budget in (1.3e-3, 1.6e-3, 2.1e-3, 3e-3):
        plan = search(rep, {"latency": budget}, estimator="mse", pairs=pairs, latency=t)
        best = min((sum(0 if p == (32, 32) else rep.weight["mse"][n][p[0]] for n, p in zip("abc", combo, strict=True)), combo)
                   for combo in itertools.product(pairs, repeat=3) if t.predict(dict(zip("abc", combo, strict=True))) <= budget)
        assert plan.objective == pytest.approx(best[0])
        assert t.predict(plan.bits) <= budget * (1 + 1e-9)
        assert plan.costs["latency"] == pytest.approx(t.predict(plan.bits))


def test_latency_budget_errors():
    rep, t = _rep(), _table()
    with pytest.raises(ConfigError, match="smallest achievable"):
        search(rep, {"latency": 0.5e-3}, estimator="mse", latency=t)
    with pytest.raises(UnsupportedError, match="W16A8"):
        search(rep, {"latency": 2e-3}, estimator="mse", pairs=[(8, 8)], latency=_table(), fixed={"a": (16, 8)})
    with pytest.raises(ConfigError, match="no entry for layer"):
        search(rep, {"latency": 2e-3}, estimator="mse", latency=_table(layers={"a": 1e-3}))


def test_table_check_refuses_other_machines_models_and_batches(tmp_path):
    t = _table()
    here = machine_fingerprint(2)
    t.check(here, "k", 1)
    for field, value in (("cpu", "another CPU"), ("runtime_version", "0.0.1"), ("threads", 8)):
        other = _table(machine={**here, field: value})
        with pytest.raises(LatencyTableMismatch, match="measured elsewhere"):
            other.check(here)
    with pytest.raises(LatencyTableMismatch, match="another model"):
        t.check(here, "other-key")
    with pytest.raises(LatencyTableMismatch, match="batch 1, not 64"):
        t.check(here, "k", 64)
    p = tmp_path / "t.json"
    t.save(p)
    assert LatencyTable.load(p) == t
    p.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ConfigError, match="not a lowbit latency table"):
        LatencyTable.load(p)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        LatencyTable.load(p)


def _mlp_q():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 28, 28)
    return lowbit.quantize_(FmnistMLP().eval(), lowbit.load_recipe("w8a8"), data=[x]), x


def test_measured_table_and_cache_never_reuse_a_foreign_table(tmp_path):
    q, x = _mlp_q()
    t = measure_latency_table(q, x[:1], repeats=2, calls=2)
    assert set(t.layers) == {"fc1", "fc2"} and t.int8_seconds > 0 and t.float_seconds > 0
    assert t.model_key == quantized_model_key(q, x[:1])
    t1, fresh = cached_latency_table(q, x[:1], cache_dir=tmp_path, repeats=2, calls=2)
    assert fresh
    t2, fresh = cached_latency_table(q, x[:1], cache_dir=tmp_path, repeats=2, calls=2)
    assert not fresh and t2 == t1
    (path,) = tmp_path.rglob("*.json")
    d = json.loads(path.read_text())
    d["machine"]["cpu"] = "another CPU"
    path.write_text(json.dumps(d))
    t3, fresh = cached_latency_table(q, x[:1], cache_dir=tmp_path, repeats=2, calls=2)
    assert fresh and t3.machine == machine_fingerprint(2)
    r = measure_plan_latency(q, FmnistMLP().eval(), x[:1], repeats=2, calls=2)
    assert r["ratio"] == pytest.approx(r["plan"] / r["float"])
    with pytest.raises(ConfigError, match="batch must be a positive integer"):
        measure_latency_table(q, x[:1], batch=0)
    with pytest.raises(ConfigError, match="no quantized layers"):
        measure_latency_table(FmnistMLP(), x[:1])

"""Benchmark: latency-budgeted mixed precision on ONNX Runtime (measured per-layer table, this machine).

For each model: the per-layer latency table (``lowbit.algorithms.mixed_precision.latency``: all
int8, each layer alone float, all float; batch 32, 2 threads, interleaved medians), per-layer
loss sensitivities (512 labelled training images) at W2/W4/W8 with A8, then the MILP plan of least
summed sensitivity whose *predicted* latency is at most 0.7x float (candidates W2A8, W4A8,
W8A8 and float; first / last layer W8A8 as the recipes), and the same with a size budget of 4
bits per weight on top. Each plan and each uniform configuration (W8A8, W4A8, W2A8) is
quantized with the same PTQ method (per-channel min-max weights, MSE activation ranges, 512
calibration images), evaluated on the 10 000 test images and timed end to end against float in
one interleaved run; the plan's measured latency is compared with the table's prediction. Extra
check of the additive model: plans with 1 to 3 random float layers, predicted vs measured.

    python bench/latency_budget.py [--models fmnist-resnet,fmnist-mobilenet] [--budget 0.7]

Writes bench/results/latency_budget.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
from pathlib import Path

import torch

import lowbit
from lowbit.algorithms.mixed_precision import Plan, layer_sensitivity, search, size_for_average_bits
from lowbit.algorithms.mixed_precision.latency import measure_latency_table, measure_plan_latency
from lowbit.data import load_fashion_mnist
from lowbit.io import atomic_write_text
from lowbit.zoo import load_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "latency_budget.json"
PAIRS = [(2, 8), (4, 8), (8, 8), (32, 32)]


def base_config() -> lowbit.PTQConfig:
    return lowbit.PTQConfig.from_dict({
        "weight": {"bits": 8, "signed": True, "mapping": "symmetric", "granularity": "per_channel", "axis": 0, "observer": "minmax"},
        "activation": {"bits": 8, "signed": False, "mapping": "affine", "granularity": "per_tensor", "observer": "mse"},
    })


def run_plan(model, plan: Plan, base, calib, test, table, repeats: int) -> dict:
    q = lowbit.quantize_(copy.deepcopy(model), plan.to_config(base), data=calib)
    m = measure_plan_latency(q, model, test.images[:1], batch=table.batch, threads=table.threads, repeats=repeats)
    pred = table.predict(plan.bits)
    return {"accuracy": lowbit.evaluate(q, test), "latency_ratio": m["ratio"], "predicted_ratio": pred / m["float"],
            "prediction_error": (pred - m["plan"]) / m["plan"], "float_layers": [n for n, p in plan.bits.items() if p == (32, 32)],
            "bits": {k: list(v) for k, v in plan.bits.items()}, "average_bits": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fmnist-resnet,fmnist-mobilenet")
    ap.add_argument("--budget", type=float, default=0.7, help="latency budget as a fraction of float")
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--batch", type=int, default=32, help="batch size (at batch 1 this tiny model's timings drift by tens of %% between runs)")
    args = ap.parse_args()
    torch.manual_seed(0)
    calib = load_fashion_mnist("train").subset(512, seed=0)
    test = load_fashion_mnist("test")
    data = [(calib.images[i:i + 128], calib.labels[i:i + 128]) for i in range(0, 512, 128)]
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    base = base_config()
    for name in args.models.split(","):
        model = load_model(name)
        q8 = lowbit.quantize_(copy.deepcopy(model), base, data=calib)
        table = measure_latency_table(q8, test.images[:1], batch=args.batch, repeats=args.repeats)
        rep = layer_sensitivity(model, base, data, bits=(2, 4, 8), estimators=["loss"])
        ends = {rep.layers[0]: (8, 8), rep.layers[-1]: (8, 8)}
        budget = args.budget * table.float_seconds
        row: dict = {"fp32": lowbit.evaluate(model, test), "budget_ratio": args.budget, "table": table.to_dict(), "uniform": {}, "plans": {}}
        for wb in (8, 4, 2):
            plan = Plan(bits={n: ends.get(n, (wb, 8)) for n in rep.layers})
            r = run_plan(model, plan, base, calib, test, table, args.repeats)
            r["meets_budget"] = r["latency_ratio"] <= args.budget
            row["uniform"][f"W{wb}A8"] = r
            print(f"{name} uniform W{wb}A8: {r['accuracy']:.2f} %, latency {r['latency_ratio']:.3f}x float", flush=True)
        budgets = {"latency": {"latency": budget},
                   "latency+size4": {"latency": budget, "size": size_for_average_bits(rep, 4.0)}}
        for key, b in budgets.items():
            plan = search(rep, b, estimator="loss", pairs=PAIRS, fixed=ends, latency=table)
            r = run_plan(model, plan, base, calib, test, table, args.repeats)
            r["average_bits"] = plan.average_weight_bits(rep)
            r["meets_budget"] = r["latency_ratio"] <= args.budget
            row["plans"][key] = r
            print(f"{name} mixed ({key}): {r['accuracy']:.2f} %, latency {r['latency_ratio']:.3f}x (predicted {r['predicted_ratio']:.3f}x, "
                  f"{r['prediction_error']:+.1%}), {r['average_bits']:.2f} bits, float layers {r['float_layers']}", flush=True)
        rng = random.Random(0)
        checks = []
        for k in (1, 1, 2, 2, 3, 3):
            floats = set(rng.sample(rep.layers, k))
            plan = Plan(bits={n: (32, 32) if n in floats else (8, 8) for n in rep.layers})
            q = lowbit.quantize_(copy.deepcopy(model), plan.to_config(base), data=calib)
            m = measure_plan_latency(q, model, test.images[:1], batch=args.batch, repeats=args.repeats)
            checks.append({"float_layers": sorted(floats), "prediction_error": (table.predict(plan.bits) - m["plan"]) / m["plan"]})
        row["random_plans"] = checks
        row["median_abs_prediction_error"] = statistics.median(abs(c["prediction_error"]) for c in checks)
        print(f"{name} random plans: median |predicted - measured| / measured = {row['median_abs_prediction_error']:.1%}", flush=True)
        results[name] = row
        atomic_write_text(OUT, json.dumps(results, indent=1) + "\n")
    _print(results)


def _print(results: dict) -> None:
    for name, row in results.items():
        b = row["table"]["batch"]
        print(f"\n### {name}: latency budget {row['budget_ratio']}x float on ONNX Runtime (batch {b}, 2 threads; float {row['fp32']:.2f} %)\n")
        print("| configuration | accuracy % | measured latency / float | predicted / float | prediction error | meets budget |")
        print("|---|---|---|---|---|---|")
        for k, r in [*row["uniform"].items(), *(("mixed " + k, r) for k, r in row["plans"].items())]:
            print(f"| {k} | {r['accuracy']:.2f} | {r['latency_ratio']:.3f} | {r['predicted_ratio']:.3f} | {r['prediction_error']:+.1%} | "
                  f"{'yes' if r['meets_budget'] else 'no'} |")
        print(f"\nrandom plans (1-3 float layers): median |prediction error| {row['median_abs_prediction_error']:.1%}")


if __name__ == "__main__":
    main()

"""Benchmark: the two mixed-precision searches side by side — exact MILP on sensitivity estimates vs
the differentiable (DNAS-style) Gumbel-softmax search — at equal weight size, same PTQ method.

For each model and each budget (the weight size of uniform W3A8, W4A8, W4A4 and of 2.5 bits per
weight; first / last layer pinned at W8A8 in every configuration), both searches pick per-layer weight
widths from {2, 3, 4, 6, 8} at the budget's activation width; each plan is quantized with the same
PTQ (per-channel min-max weights, MSE activation ranges, 512 calibration images) and evaluated on
the 10 000 test images. The MILP uses the loss-change estimator (the best-ranked one in
bench/sensitivity.py); its time includes the sensitivity pass. The DNAS trains only the
architecture logits against the float model's outputs (KL) on 2048 training images.

    python bench/dnas_vs_milp.py                       # fmnist-resnet
    python bench/dnas_vs_milp.py --models fmnist-resnet,fmnist-mobilenet --steps 300
    python bench/dnas_vs_milp.py --models fmnist-mobilenet --budgets W4A4

Writes bench/results/dnas_vs_milp.json, prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from mixed_precision import accuracy, base_config

import lowbit
from lowbit.algorithms.mixed_precision import Plan, dnas_search, layer_sensitivity, model_cost, search
from lowbit.data import load_fashion_mnist
from lowbit.io import atomic_write_text
from lowbit.zoo import load_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "dnas_vs_milp.json"
WIDTHS = (2, 3, 4, 6, 8)
BUDGETS = [("W3A8", 3, 8), ("W4A8", 4, 8), ("W4A4", 4, 4), ("2.5 bits, A8", 2.5, 8)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fmnist-resnet")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--samples", type=int, default=2048, help="training images the DNAS draws its batches from")
    ap.add_argument("--budgets", default=",".join(b[0] for b in BUDGETS), help=f"subset of {[b[0] for b in BUDGETS]}")
    args = ap.parse_args()
    budgets = [b for b in BUDGETS if b[0] in args.budgets.split(",")]
    torch.manual_seed(0)
    train = load_fashion_mnist("train")
    calib = train.subset(512, seed=0)
    test = load_fashion_mnist("test")
    labelled = [(calib.images[i:i + 128], calib.labels[i:i + 128]) for i in range(0, 512, 128)]
    pool = train.subset(args.samples, seed=3)
    dnas_data = [pool.images[i:i + 256] for i in range(0, args.samples, 256)]
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    for name in args.models.split(","):
        model = load_model(name)
        base = base_config("minmax")
        fp = lowbit.evaluate(model, test)
        t0 = time.perf_counter()
        rep = layer_sensitivity(model, base, labelled, bits=WIDTHS, estimators=("loss",))
        sens_s = time.perf_counter() - t0
        ends = {rep.layers[0]: (8, 8), rep.layers[-1]: (8, 8)}
        searched = sum(rep.params[n] for n in rep.layers if n not in ends)
        row: dict = {"fp32": fp, "sensitivity_seconds": sens_s, "steps": args.steps, "budgets": {}}
        for label, wb, ab in budgets:
            if isinstance(wb, int):  # a uniform configuration's size
                size = model_cost(rep, {n: ends.get(n, (wb, ab)) for n in rep.layers}, "size")
            else:  # the ends at 8 bits plus wb bits per searched weight
                size = sum(rep.params[n] for n in ends) + searched * wb / 8
            cell: dict = {"size_bytes": size}
            if isinstance(wb, int):
                uni = Plan(bits={n: ends.get(n, (wb, ab)) for n in rep.layers})
                cell["uniform"] = {"accuracy": accuracy(model, uni.to_config(base), calib, test), "average_bits": uni.average_weight_bits(rep)}
            t0 = time.perf_counter()
            milp = search(rep, {"size": size}, estimator="loss", pairs=[(w, ab) for w in WIDTHS], fixed=ends)
            milp_s = time.perf_counter() - t0 + sens_s
            t0 = time.perf_counter()
            res = dnas_search(model, base, dnas_data, {"size": size}, bits=WIDTHS, act_bits=ab, fixed=ends, steps=args.steps,
                              max_samples=args.samples)
            dnas_s = time.perf_counter() - t0
            for key, plan, secs in (("milp", milp, milp_s), ("dnas", res.plan, dnas_s)):
                cell[key] = {"accuracy": accuracy(model, plan.to_config(base), calib, test), "average_bits": plan.average_weight_bits(rep),
                             "seconds": secs, "bits": {k: list(v) for k, v in plan.bits.items()}}
            cell["dnas"]["repaired"] = res.repaired
            row["budgets"][label] = cell
            print(f"{name} {label}: " + "  ".join(f"{k} {cell[k]['accuracy']:.2f}" for k in ("uniform", "milp", "dnas") if k in cell), flush=True)
        results[name] = {**results.get(name, {}), **row, "budgets": {**results.get(name, {}).get("budgets", {}), **row["budgets"]}}
        atomic_write_text(OUT, json.dumps(results, indent=1))
    _print(results)


def _print(results: dict) -> None:
    for name, row in results.items():
        print(f"\n{name} (float {row['fp32']:.2f} %; DNAS {row['steps']} steps)\n")
        print("| budget (size of) | uniform % | MILP (loss) % | MILP bits | MILP s | DNAS % | DNAS bits | DNAS s | repairs |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, c in row["budgets"].items():
            u = f"{c['uniform']['accuracy']:.2f}" if "uniform" in c else "–"
            m, d = c["milp"], c["dnas"]
            print(f"| {label} | {u} | {m['accuracy']:.2f} | {m['average_bits']:.2f} | {m['seconds']:.0f} | {d['accuracy']:.2f} | "
                  f"{d['average_bits']:.2f} | {d['seconds']:.0f} | {d['repaired']} |")


if __name__ == "__main__":
    main()

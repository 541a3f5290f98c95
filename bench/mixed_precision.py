"""Benchmark: mixed-precision frontier vs uniform precision at equal size (same PTQ method).

For each model: per-layer sensitivities once (512 labelled training images; every estimator), then
for each uniform configuration U in W2A8, W3A8, W4A8, W4A4 (first / last layer W8A8, as the
recipes) the MILP plan whose weight size is at most U's, with the same activation width and the
same PTQ method (lowbit PTQ: per-channel weights with the chosen observer, MSE activation ranges,
512 calibration images). Both are evaluated on the 10 000 test images. Then a frontier over
average widths 2.0 .. 6 bits per weight.

    python bench/mixed_precision.py                               # both zoo models
    python bench/mixed_precision.py --models fmnist-resnet --estimators hessian
    python bench/mixed_precision.py --models fmnist-resnet --estimators loss --adaround --uniform W2A8,W3A8 --frontier 2.5,3.0

``--adaround``: both the uniform and the mixed configurations are quantized with AdaRound (the same
specs, learned rounding per layer on the 512 calibration images) instead of round-to-nearest; the
sensitivities stay those of round-to-nearest. Stored under ``MODEL+adaround``.

Writes bench/results/mixed_precision.json and docs/img/mixed_precision_MODEL.png, prints Markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import lowbit
from lowbit.algorithms.mixed_precision import Plan, layer_sensitivity, model_cost, search, size_for_average_bits
from lowbit.data import load_fashion_mnist
from lowbit.io import atomic_write_text, save_figure
from lowbit.zoo import load_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "mixed_precision.json"
UNIFORM = [(2, 8), (3, 8), (4, 8), (4, 4)]
FRONTIER = [2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 5.0, 6.0]
WIDTHS = (2, 3, 4, 6, 8)


def base_config(observer: str) -> lowbit.PTQConfig:
    return lowbit.PTQConfig.from_dict({
        "weight": {"bits": 4, "signed": True, "mapping": "symmetric", "granularity": "per_channel", "axis": 0, "observer": observer},
        "activation": {"bits": 8, "signed": False, "mapping": "affine", "granularity": "per_tensor", "observer": "mse"},
    })


def accuracy(model, config, calib, test) -> float:
    q = lowbit.quantize_(copy.deepcopy(model), config, data=calib)
    return lowbit.evaluate(q, test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fmnist-resnet,fmnist-mobilenet")
    ap.add_argument("--estimators", default="hessian,mse,loss")
    ap.add_argument("--observer", default="minmax", help="weight observer of the PTQ method (minmax or mse)")
    ap.add_argument("--adaround", action="store_true", help="quantize every configuration with AdaRound (learned rounding)")
    ap.add_argument("--uniform", default=",".join(f"W{w}A{a}" for w, a in UNIFORM), help="uniform sizes to compare at")
    ap.add_argument("--frontier", default=",".join(map(str, FRONTIER)), help="average bits per weight of the frontier")
    args = ap.parse_args()
    uniform = [(int(u[1:].split("A")[0]), int(u.split("A")[1])) for u in args.uniform.split(",") if u]
    frontier = [float(f) for f in args.frontier.split(",") if f]
    torch.manual_seed(0)
    train = load_fashion_mnist("train")
    calib = train.subset(512, seed=0)
    test = load_fashion_mnist("test")
    data = [(calib.images[i:i + 128], calib.labels[i:i + 128]) for i in range(0, 512, 128)]
    ests = args.estimators.split(",")
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    for name in args.models.split(","):
        model = load_model(name)
        base = base_config(args.observer)
        qbase = base
        if args.adaround:
            from lowbit.algorithms.adaround import AdaRoundConfig

            qbase = AdaRoundConfig(weight=base.weight, activation=base.activation)
        fp = lowbit.evaluate(model, test)
        t0 = time.perf_counter()
        rep = layer_sensitivity(model, base, data, bits=WIDTHS, estimators=ests)
        sens_s = time.perf_counter() - t0
        ends = {rep.layers[0]: (8, 8), rep.layers[-1]: (8, 8)}
        row: dict = {"fp32": fp, "sensitivity_seconds": sens_s, "observer": args.observer, "uniform": {}, "frontier": {},
                     "rounding": "adaround" if args.adaround else "nearest"}
        for wb, ab in uniform:
            bits = {n: ends.get(n, (wb, ab)) for n in rep.layers}
            size = model_cost(rep, bits, "size")
            plan_u = Plan(bits=bits)
            acc_u = accuracy(model, plan_u.to_config(qbase), calib, test)
            cell = {"size_bytes": size, "average_bits": plan_u.average_weight_bits(rep), "uniform": acc_u, "mixed": {}}
            for est in ests:
                plan = search(rep, {"size": size}, estimator=est, pairs=[(w, ab) for w in WIDTHS], fixed=ends)
                cell["mixed"][est] = {"accuracy": accuracy(model, plan.to_config(qbase), calib, test),
                                      "average_bits": plan.average_weight_bits(rep), "bits": {k: list(v) for k, v in plan.bits.items()}}
            row["uniform"][f"W{wb}A{ab}"] = cell
            print(f"{name} W{wb}A{ab}: uniform {acc_u:.2f}  " + "  ".join(f"{e} {c['accuracy']:.2f}" for e, c in cell["mixed"].items()))
        for avg in frontier:
            try:
                budget = size_for_average_bits(rep, avg)
                plan = search(rep, {"size": budget}, estimator=ests[0], pairs=[(w, 8) for w in WIDTHS])
            except lowbit.ConfigError as e:
                print(f"{name} {avg} bits: {e}")
                continue
            row["frontier"][str(avg)] = {"accuracy": accuracy(model, plan.to_config(qbase), calib, test),
                                         "average_bits": plan.average_weight_bits(rep), "size_bytes": plan.costs["size"],
                                         "bits": {k: list(v) for k, v in plan.bits.items()}}
            print(f"{name} frontier {avg} bits/weight ({ests[0]}): {row['frontier'][str(avg)]['accuracy']:.2f}")
        key = name + ("+adaround" if args.adaround else "")
        results[key] = row
        atomic_write_text(OUT, json.dumps(results, indent=1))
        _plot(key, row, ROOT / "docs" / "img" / f"mixed_precision_{key}.png")
    _print(results, ests)


def _print(results: dict, ests: list[str]) -> None:
    for name, row in results.items():
        print(f"\n{name} (float {row['fp32']:.2f} %, weights {row['observer']}, sensitivities {row['sensitivity_seconds']:.0f} s)\n")
        print("| uniform | avg bits | uniform % | " + " | ".join(f"mixed ({e}) %" for e in ests) + " |")
        print("|---|---|---|" + "---|" * len(ests))
        for u, c in row["uniform"].items():
            print(f"| {u} | {c['average_bits']:.2f} | {c['uniform']:.2f} | "
                  + " | ".join(f"{c['mixed'][e]['accuracy']:.2f} ({c['mixed'][e]['average_bits']:.2f} b)" for e in ests if e in c["mixed"]) + " |")
        print("\n| avg bits budget | achieved | accuracy % | drop pp |\n|---|---|---|---|")
        for avg, c in row["frontier"].items():
            print(f"| {avg} | {c['average_bits']:.2f} | {c['accuracy']:.2f} | {row['fp32'] - c['accuracy']:+.2f} |")


def _plot(name: str, row: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    fr = sorted(row["frontier"].values(), key=lambda c: c["average_bits"])
    ax.plot([c["average_bits"] for c in fr], [c["accuracy"] for c in fr], "o-", label="mixed precision (MILP)")
    for u, c in row["uniform"].items():
        ax.plot(c["average_bits"], c["uniform"], "s", color="grey")
        ax.annotate(u, (c["average_bits"], c["uniform"]), fontsize=7)
    ax.axhline(row["fp32"], ls="--", color="black", lw=0.8, label="float")
    ax.set_xlabel("bits per weight (average)")
    ax.set_ylabel("top-1 % (10k test)")
    ax.set_title(f"{name}: accuracy vs size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

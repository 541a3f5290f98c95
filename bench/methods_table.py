"""Benchmark: every post-training method x weight/activation bit width, on fmnist-resnet and fmnist-mobilenet.

Rows W8/W6/W4/W3/W2 x A8/A4; columns (10 000 test images, accuracy %):

* ``naive``     per-channel min-max weights, min-max activations, round to nearest (512 images);
* ``ptq``       lowbit PTQ: per-channel MSE-searched weights, MSE activation ranges (512 images);
* ``dfq``       DFQ level 1, **no data**: equalization, bias absorption, analytic bias correction,
                activation ranges from BatchNorm statistics (per-channel MSE weights);
* ``zeroq``     ``ptq`` calibrated on 256 inputs distilled from BatchNorm statistics (**no data**);
* ``aciq``      per-channel bit allocation with W as the mean bits (2..8 bits, MSE clips), 512 images;
* ``adaround``  ``ptq`` + AdaRound (1000 iterations per layer), 512 images;
* ``iterative`` ``ptq`` + iterative adaptation to quantization noise, 2048 images (the shipped
                recipes' schedules: W>=4 a block per step + 2 final epochs; W<=3 a layer per step + 8).

First and last layers stay W8A8 in every cell (as in the recipes); activations unsigned affine,
weights signed symmetric per channel. Results are cached per cell in the JSON (re-running resumes;
``--fresh`` starts over), so the ~1 h run can be split.

    python bench/methods_table.py                     # both models, every method and width
    python bench/methods_table.py --models fmnist-resnet --methods naive,adaround --bits W4A4,W2A8
    python bench/methods_table.py --print-only        # table + plot from the last JSON

Writes bench/results/methods_table.json and docs/img/methods_table.png, prints Markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import lowbit
from lowbit.algorithms.aciq import ACIQConfig
from lowbit.algorithms.adaround import AdaRoundConfig
from lowbit.algorithms.dfq import DFQConfig
from lowbit.algorithms.iterative import IterativeConfig
from lowbit.algorithms.zeroq import distill_data
from lowbit.data import load_fashion_mnist
from lowbit.io import atomic_write_text, save_figure
from lowbit.zoo import load_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "methods_table.json"
PLOT = ROOT / "docs" / "img" / "methods_table.png"
BITS = [f"W{w}A{a}" for w in (8, 6, 4, 3, 2) for a in (8, 4)]
METHODS = ["naive", "ptq", "dfq", "zeroq", "aciq", "adaround", "iterative"]
INPUT_RANGE = [-0.8102, 2.0227]  # Fashion-MNIST pixels [0, 1] after lowbit.data's normalization (DFQ's only prior)


def _specs(w: int, a: int, observer: str) -> dict:
    return {
        "weight": {"bits": w, "signed": True, "mapping": "symmetric", "granularity": "per_channel", "axis": 0, "observer": observer},
        "activation": {"bits": a, "signed": False, "mapping": "affine", "granularity": "per_tensor", "observer": observer},
        "overrides": [{"select": {"position": p}, "weight": {"bits": 8, "observer": "minmax"}, "activation": {"bits": 8}}
                      for p in ("first", "last")],
    }


def make_config(method: str, w: int, a: int) -> lowbit.PTQConfig:
    """The config of one table cell (see the module docstring)."""
    if method == "naive":
        return lowbit.PTQConfig.from_dict({"kind": "ptq", **_specs(w, a, "minmax")})
    d = _specs(w, a, "mse")
    if method in ("ptq", "zeroq"):
        return lowbit.PTQConfig.from_dict({"kind": "ptq", **d})
    if method == "dfq":
        d["activation"]["observer"] = "minmax"  # ranges come from BN statistics, not an observer
        return DFQConfig.from_dict({"kind": "dfq", **d, "input_range": INPUT_RANGE})
    if method == "aciq":
        d["weight"].update(bits=8)
        return ACIQConfig.from_dict({"kind": "aciq", **d, "bit_budget": float(w), "clip": "mse"})
    if method == "adaround":
        return AdaRoundConfig.from_dict({"kind": "adaround", **d, "iters": 1000, "lr": 0.01, "reg_weight": 0.01, "batch_size": 32})
    if method == "iterative":
        sched = ({"granularity": "block", "final_epochs": 2, "lr": 2e-4} if w >= 4
                 else {"granularity": "layer", "final_epochs": 8, "lr": 5e-4})
        return IterativeConfig.from_dict({"kind": "iterative", **d, "calib_size": 2048, "epochs_per_step": 3, "batch_size": 64, **sched})
    raise SystemExit(f"unknown method {method!r}; use {METHODS}")


def run(models: list[str], methods: list[str], bits: list[str], fresh: bool) -> dict:
    table = {} if fresh or not OUT.exists() else json.loads(OUT.read_text())
    test = load_fashion_mnist("test")
    train = load_fashion_mnist("train")
    calib = {512: train.subset(512, seed=0), 2048: train.subset(2048, seed=0)}
    for name in models:
        model = load_model(name)
        entry = table.setdefault(name, {"cells": {}})
        if "fp32" not in entry:
            entry["fp32"] = lowbit.evaluate(model, test)
        distilled = None
        for cell in bits:
            w, a = int(cell[1]), int(cell[3])
            for method in methods:
                key = f"{cell}/{method}"
                if key in entry["cells"]:
                    continue
                cfg = make_config(method, w, a)
                if method == "zeroq":
                    if distilled is None:
                        t0 = time.perf_counter()
                        distilled, _ = distill_data(model, samples=256, iters=300)
                        entry["zeroq_distill_seconds"] = time.perf_counter() - t0
                    data = distilled
                elif method == "dfq":
                    data = None
                else:
                    data = calib[cfg.calib_size]
                torch.manual_seed(0)
                t0 = time.perf_counter()
                q = lowbit.quantize_(copy.deepcopy(model), cfg, data=data)
                seconds = time.perf_counter() - t0
                acc = lowbit.evaluate(q, test)
                entry["cells"][key] = {"accuracy": acc, "drop_pp": entry["fp32"] - acc, "seconds": seconds}
                print(f"{name:17s} {cell} {method:9s} {acc:6.2f}  ({seconds:6.1f} s)", flush=True)
                atomic_write_text(OUT, json.dumps(table, indent=1) + "\n")
    return table


def print_tables(table: dict) -> None:
    for name, entry in table.items():
        methods = [m for m in METHODS if any(k.endswith("/" + m) for k in entry["cells"])]
        print(f"\n### {name} (float {entry['fp32']:.2f} %): accuracy %, (drop pp)\n")
        print("| bits | " + " | ".join(methods) + " |")
        print("|---|" + "---|" * len(methods))
        for cell in BITS:
            row = []
            for m in methods:
                c = entry["cells"].get(f"{cell}/{m}")
                if c is None:
                    row.append("–")
                    continue
                best = max(entry["cells"].get(f"{cell}/{k}", {"accuracy": -1})["accuracy"] for k in methods)
                s = f"{c['accuracy']:.2f} ({-c['drop_pp']:+.2f})"
                row.append(f"**{s}**" if c["accuracy"] == best else s)
            if any(r != "–" for r in row):
                print(f"| {cell} | " + " | ".join(row) + " |")
        secs = {m: [c["seconds"] for k, c in entry["cells"].items() if k.endswith("/" + m)] for m in methods}
        print("\nquantize_ seconds (median over cells): " + ", ".join(f"{m} {sorted(v)[len(v) // 2]:.1f}" for m, v in secs.items() if v))


def plot(table: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(6.5 * len(table), 4.6), squeeze=False)
    colors = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, (name, entry) in zip(axes[0], table.items(), strict=True):
        for m in METHODS:
            for a, style in ((8, "-"), (4, "--")):
                pts = [(w, entry["cells"][f"W{w}A{a}/{m}"]["accuracy"]) for w in (8, 6, 4, 3, 2) if f"W{w}A{a}/{m}" in entry["cells"]]
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3, color=colors[m], label=f"{m} A{a}")
        ax.axhline(entry["fp32"], color="k", lw=0.8, ls=":", label="float")
        ax.set(title=name, xlabel="weight bits (first/last layers W8A8)", ylabel="test accuracy %", ylim=(max(0, entry["fp32"] - 15), entry["fp32"] + 1))
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    save_figure(fig, PLOT)
    print(f"\nplot: {PLOT.relative_to(ROOT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="fmnist-resnet,fmnist-mobilenet")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--bits", default=",".join(BITS), help="cells like W4A4,W2A8")
    ap.add_argument("--fresh", action="store_true", help="ignore cached cells")
    ap.add_argument("--print-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.print_only:
        table = json.loads(OUT.read_text())
    else:
        bad = [b for b in args.bits.split(",") if b not in BITS]
        if bad:
            raise SystemExit(f"unknown cells {bad}; use {BITS}")
        table = run(args.models.split(","), args.methods.split(","), args.bits.split(","), args.fresh)
    print_tables(table)
    plot(table)


if __name__ == "__main__":
    main()

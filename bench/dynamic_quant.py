"""Benchmark: instance-aware dynamic quantization (issue 7) against static uniform and static mixed
precision at the same training budget, on fmnist-resnet.

Every run starts from the float zoo model and trains on the 60 000 training images (Adam, half-cosine
decay, batch 64, the epochs given); the dynamic layers are every conv after the stem; the stem and the
classifier are W8A8 in every configuration (dynamic and static alike). Accuracy on the 10 000 test
images; cost = measured average BitOPs per image (``MACs * b_w * b_a`` summed over the layers, the
controller's MLP counted at 32 x 32 bits), also as a fraction of the static W4A4 model's.

    python bench/dynamic_quant.py --run dyn-1234-t019 --bits 1,2,3,4 --target 0.19 --epochs 2
    python bench/dynamic_quant.py --run static-1234-t019 --bits 1,2,3,4 --target 0.19 --hidden 0
    python bench/dynamic_quant.py --table [--report DIR]

``--hidden 0`` trains the static mixed-precision baseline with the same search, budget and schedule:
one learned choice per layer for every input (no controller). Static uniform rows (W1A1 XNOR, W1A8
BWN, W2A2 and W4A4 LSQ / DoReFa / PACT) are the measured rows of bench/results/qat_table.json (same
float model, same first / last W8A8 layers; their BitOPs computed here from the same layer MACs).
Each --run also records the analysis: average bits vs the float model's confidence, per class, and
per layer for the easiest / hardest fifth of the test set. The trained models are saved to
bench/results/dynamic_models/NAME.safetensors (not committed).

Writes bench/results/dynamic_quant.json; --table prints the Markdown table, --report writes the HTML
report with the plots.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from lowbit.algorithms.dynamic import (
    DynamicConfig,
    dynamic_analysis,
    evaluate_dynamic,
    model_confidence,
    prepare,
    save_dynamic,
    train_dynamic,
)
from lowbit.data import load_fashion_mnist
from lowbit.io import atomic_write_text
from lowbit.zoo import load_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "dynamic_quant.json"
MODELS = ROOT / "bench" / "results" / "dynamic_models"
QAT = ROOT / "bench" / "results" / "qat_table.json"
#: static uniform rows taken from qat_table.json: key -> (label, bits of the dynamic-position layers (w, a),
#: layers kept at 8 bits besides stem / fc)
STATIC = {
    "xnor": ("XNOR W1A1 (shortcuts W8A8)", (1, 1), ("shortcut",)),
    "bwn": ("BWN W1A8", (1, 8), ()),
    "qat-w2a2-lsq": ("LSQ W2A2", (2, 2), ()),
    "qat-w2a2-lsq@bs128": ("LSQ W2A2 (batch 128)", (2, 2), ()),
    "qat-w2a2-dorefa@cuda": ("DoReFa W2A2", (2, 2), ()),
    "qat-w2a2-dsq@cuda": ("DSQ W2A2", (2, 2), ()),
    "qat-w3a3-lsq": ("LSQ W3A3", (3, 3), ()),
    "qat-w4a4-lsq": ("LSQ W4A4", (4, 4), ()),
    "qat-w4a4-pact@cuda": ("PACT W4A4", (4, 4), ()),
}


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    model = load_model("fmnist-resnet")
    cfg = DynamicConfig(bits=tuple(int(b) for b in args.bits.split(",")), target_bitops=args.target, hidden=args.hidden, grid=args.grid,
                        epochs=args.epochs, lr=args.lr, batch_size=args.batch, reg_weight=args.reg, seed=args.seed,
                        noise=tuple(float(v) for v in args.noise.split(",")), trunk=tuple(args.trunk.split("+")) if args.trunk else None)
    dyn = prepare(model, cfg, train.subset(cfg.calib_size, seed=0))
    hist = train_dynamic(dyn, (train.images, train.labels), **cfg.train_kwargs(), progress=sys.stderr.isatty())
    r = evaluate_dynamic(dyn, test)
    MODELS.mkdir(parents=True, exist_ok=True)
    save_dynamic(dyn, MODELS / f"{args.run}.safetensors", model_spec="fmnist-resnet")
    conf, pred = model_confidence(model, test.images)
    w4a4 = static_bitops(dyn, (4, 4), ())
    row = {"name": args.run, "kind": "dynamic" if args.hidden else "static-mixed", "bits": list(cfg.bits), "target": cfg.target_bitops,
           "hidden": cfg.hidden, "grid": cfg.grid, "noise": list(cfg.noise),
           "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "reg_weight": cfg.reg_weight,
           "trunk": list(dyn.trunk), "accuracy": r["accuracy"], "mean_bitops": r["mean_bitops"], "fraction_of_w4a4": r["mean_bitops"] / w4a4,
           "mean_fraction": r["mean_fraction"], "controller_bitops": r["controller_bitops"], "controller_share": r["controller_share"],
           "min_bitops": r["min_bitops"], "max_bitops": r["max_bitops"], "train_seconds": hist["seconds"], "history": hist["history"],
           "layers": r["layers"], "layer_bits": r["layer_bits"], **dynamic_analysis(r, conf, test.labels)}
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results.setdefault("runs", {})[args.run] = row
    results["float_accuracy"] = 100 * float((pred == test.labels).double().mean())
    results["layer_macs"] = dyn.layer_macs()
    results["fixed_bitops"] = dyn.fixed_bitops()
    atomic_write_text(OUT, json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in row.items() if k not in ("history", "per_class", "confidence_quintiles")}, indent=1))


def static_bitops(dyn_or_macs, wa: tuple[int, int], keep8: tuple[str, ...], fixed: int | None = None) -> float:
    """BitOPs per image of a static configuration: the fixed W8A8 layers plus every dynamic-position layer
    at ``wa`` (those whose name contains a ``keep8`` part at W8A8)."""
    macs = dyn_or_macs.layer_macs() if hasattr(dyn_or_macs, "layer_macs") else dyn_or_macs
    fixed = dyn_or_macs.fixed_bitops() if fixed is None else fixed
    return fixed + sum(m * (64 if any(k in n for k in keep8) else wa[0] * wa[1]) for n, m in macs.items())


def table(results: dict) -> list[dict]:
    """Rows (dynamic, static mixed, static uniform) sorted by average BitOPs."""
    macs, fixed = results["layer_macs"], results["fixed_bitops"]
    w4a4 = static_bitops(macs, (4, 4), (), fixed)
    qat = json.loads(QAT.read_text()) if QAT.exists() else {}
    rows = []
    for key, (label, wa, keep8) in STATIC.items():
        if key in qat:
            q = qat[key]
            b = static_bitops(macs, wa, keep8, fixed)
            rows.append({"name": label, "kind": "static-uniform", "accuracy": q["accuracy"], "mean_bitops": b, "fraction_of_w4a4": b / w4a4,
                         "epochs": q.get("epochs"), "batch_size": q.get("batch_size", 128), "device": q.get("device", "cpu")})
    for r in results.get("runs", {}).values():
        rows.append({**{k: r[k] for k in ("name", "kind", "accuracy", "mean_bitops", "fraction_of_w4a4", "epochs", "batch_size")},
                     "controller_share": r["controller_share"], "train_seconds": r["train_seconds"], "device": "cpu"})
    return sorted(rows, key=lambda r: r["mean_bitops"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="name of a training run to do and record")
    ap.add_argument("--bits", default="1,2,3,4")
    ap.add_argument("--target", type=float, default=0.19, help="average BitOPs, fraction of the static model at the largest candidate")
    ap.add_argument("--hidden", type=int, default=16, help="controller width; 0: the static mixed-precision baseline")
    ap.add_argument("--grid", type=int, default=1, help="the controller pools the trunk features over a grid x grid split")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reg", type=float, default=5.0)
    ap.add_argument("--trunk", default="", help="trunk module names joined by '+' (default: the first conv block)")
    ap.add_argument("--noise", default="1,0", help="Gumbel-noise scale start,end (1,1: plain Gumbel-softmax throughout)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--report", help="write the HTML report (plots) into this folder")
    ap.add_argument("--analysis", default="", help="the run whose bits-vs-difficulty analysis the report shows (default: the first)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.run:
        t = time.perf_counter()
        run(args)
        print(f"{args.run}: {time.perf_counter() - t:.0f} s")
    if args.table or args.report:
        results = json.loads(OUT.read_text())
        rows = table(results)
        fa = results["float_accuracy"]
        print(f"float {fa:.2f} %\n")
        print("| configuration | kind | accuracy % | vs float pp | avg BitOPs (M) | x W4A4 | controller share | epochs | train s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            cs = f"{100 * r['controller_share']:.2f} %" if "controller_share" in r else ""
            ts = f"{r['train_seconds']:.0f}" if "train_seconds" in r else ""
            print(f"| {r['name']} | {r['kind']} | {r['accuracy']:.2f} | {r['accuracy'] - fa:+.2f} | {r['mean_bitops'] / 1e6:.1f} | "
                  f"{r['fraction_of_w4a4']:.3f} | {cs} | {r['epochs']} | {ts} |")
        if args.report:
            from lowbit.report.html import write_dynamic_report

            runs = results.get("runs", {})
            best = runs.get(args.analysis) or next(iter(runs.values()), {})
            keys = ("confidence_quintiles", "per_class", "hard_layer_bits", "easy_layer_bits", "corr_bits_vs_confidence", "distinct_configs")
            dyn = {"model": "fmnist-resnet", "float_accuracy": fa, "curve": rows,
                   "analysis": {k: best[k] for k in keys} if all(k in best for k in keys) else None, "analysis_of": best.get("name")}
            print(f"report: {write_dynamic_report(dyn, args.report)['html']}")


if __name__ == "__main__":
    main()

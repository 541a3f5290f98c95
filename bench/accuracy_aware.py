"""Benchmark: accuracy-aware tuning (``lowbit quantize --max-drop``) with each ranking method.

For each model and each method (hessian / loss / mse rankings, and the measured greedy), the PTQ
recipe (default W4A4: per-channel MSE weights, MSE activations, first / last layer W8A8, 512
calibration images) is tuned until the drop on a seeded 5000-image half of the test set is within
``--max-drop``; raised layers become W8A8. Reported per method: layers raised, evaluations,
seconds, the held-out drop, the drop on the other 5000 test images (never seen by the tuning) and
on all 10 000.

    python bench/accuracy_aware.py [--models fmnist-resnet,fmnist-mobilenet] [--recipe w4a4] [--max-drop 0.1]

Writes bench/results/accuracy_aware.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

import lowbit
from lowbit.algorithms.mixed_precision import accuracy_aware_tune, held_out_split
from lowbit.data import load_fashion_mnist
from lowbit.io import atomic_write_text
from lowbit.zoo import load_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "accuracy_aware.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fmnist-resnet,fmnist-mobilenet")
    ap.add_argument("--recipe", default="w4a4")
    ap.add_argument("--max-drop", type=float, default=0.1)
    ap.add_argument("--methods", default="hessian,loss,mse,greedy")
    ap.add_argument("--raise-to", default="w8a8")
    args = ap.parse_args()
    torch.set_num_threads(2)
    test = load_fashion_mnist("test")
    val, rest = held_out_split(test, 5000)
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    for name in args.models.split(","):
        model = load_model(name).eval()
        cfg = lowbit.load_recipe(args.recipe)
        calib = load_fashion_mnist("train").subset(cfg.calib_size, seed=0)
        f_val, f_rest, f_all = (lowbit.evaluate(model, d) for d in (val, rest, test))
        rows = {}
        for method in args.methods.split(","):
            print(f"== {name} / {args.recipe} / {method}", flush=True)
            r = accuracy_aware_tune(model, cfg, calib, val, max_drop=args.max_drop, method=method, raise_to=args.raise_to,
                                    float_accuracy=f_val, log=print)
            q = lowbit.quantize_(copy.deepcopy(model), r.config, data=calib)
            a_rest, a_all = lowbit.evaluate(q, rest), lowbit.evaluate(q, test)
            rows[method] = r.to_dict() | {"unseen_drop": f_rest - a_rest, "test_accuracy": a_all, "test_drop": f_all - a_all}
            print(r.summary(), f"| unseen drop {f_rest - a_rest:+.2f} pp, all-test {a_all:.2f} %", flush=True)
        results[f"{name}/{args.recipe}/{args.max_drop}/{args.raise_to}"] = {
            "model": name, "recipe": args.recipe, "max_drop": args.max_drop, "raise_to": args.raise_to,
            "float": {"held_out": f_val, "unseen": f_rest, "test": f_all}, "methods": rows,
            "torch_threads": torch.get_num_threads(),
        }
        atomic_write_text(OUT, json.dumps(results, indent=1) + "\n")
    print("\n| model | method | layers raised (of candidates) | evaluations | s | held-out drop pp | unseen drop pp | test % | met |")
    print("|---|---|---|---|---|---|---|---|---|")
    for res in results.values():
        for m, r in res["methods"].items():
            print(f"| {res['model']} {res['recipe']} ≤{res['max_drop']} | {m} | {len(r['raised'])} ({len(r['candidates'])}) | "
                  f"{r['evaluations']} | {r['seconds']:.0f} | {r['drop']:+.2f} (base {res['float']['held_out'] - r['base_accuracy']:+.2f}) | "
                  f"{r['unseen_drop']:+.2f} | {r['test_accuracy']:.2f} | {'yes' if r['met'] else 'no'} |")


if __name__ == "__main__":
    main()

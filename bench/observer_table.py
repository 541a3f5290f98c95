"""Benchmark: each recipe x each activation observer on fmnist-resnet and fmnist-mobilenet (accuracy drop, pp),
next to a naive min-max baseline (same bit widths, min-max ranges for weights and activations, per-tensor
weights, no first/last-layer overrides). Full 10 000-image test set, 512 calibration images.

Writes bench/results/observer_table.json and prints a Markdown table.

    python bench/observer_table.py
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import lowbit
from lowbit.config import QuantSpec
from lowbit.data import load_fashion_mnist
from lowbit.quant import PerTensor
from lowbit.zoo import load_model

OUT = Path(__file__).parent / "results" / "observer_table.json"
OBSERVERS = ["minmax", "ema", "percentile", "mse", "entropy", "aciq"]


def naive(cfg: lowbit.PTQConfig) -> lowbit.PTQConfig:
    w = cfg.weight
    if w is not None:
        w = QuantSpec(format=w.format, mapping=w.mapping, granularity=PerTensor(), observer="minmax")
    a = cfg.activation.replace(observer="minmax") if cfg.activation is not None else None
    return cfg.replace(weight=w, activation=a, overrides=(), group_policy="adjust")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="fmnist-resnet,fmnist-mobilenet")
    ap.add_argument("--print-only", action="store_true", help="re-print the table from the last JSON")
    args = ap.parse_args()
    if args.print_only:
        print_tables(json.loads(OUT.read_text()))
        return
    test = load_fashion_mnist("test")
    calib = load_fashion_mnist("train").subset(512, seed=0)
    table = {}
    for name in args.models.split(","):
        model = load_model(name)
        fp32 = lowbit.evaluate(model, test)
        table[name] = {"fp32": fp32, "recipes": {}}
        for recipe in lowbit.list_recipes():
            cfg = lowbit.load_recipe(recipe)
            if isinstance(cfg, lowbit.DynamicConfig):  # not applied by quantize_ (lowbit dynamic train)
                continue
            row = {}
            runs = {"naive-minmax": naive(cfg)}
            if cfg.activation is None or cfg.activation.dynamic:
                runs["recipe"] = cfg
            else:
                for ob in OBSERVERS:
                    runs[ob] = cfg.replace(activation=cfg.activation.replace(observer=ob))
            for label, c in runs.items():
                q = lowbit.quantize_(copy.deepcopy(model), c, data=calib)
                row[label] = round(fp32 - lowbit.evaluate(q, test), 2)
            table[name]["recipes"][recipe] = row
            print(name, recipe, row, flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    print_tables(table)


def print_tables(table: dict) -> None:
    """Markdown: one row per recipe; 'recipe' = the recipe as shipped (weight-only / dynamic recipes)."""
    for name, t in table.items():
        print(f"\n{name} (fp32 {t['fp32']:.2f} %), accuracy drop in pp (lower is better)\n")
        cols = ["naive-minmax", *OBSERVERS, "recipe"]
        print("| recipe | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for recipe, row in t["recipes"].items():
            print(f"| {recipe} | " + " | ".join(str(row.get(c, "-")) for c in cols) + " |")


if __name__ == "__main__":
    main()

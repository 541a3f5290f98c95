"""Benchmark: do the per-layer sensitivity estimators predict the real damage?

For every quantizable layer of the model (BN folded), the estimators of
:func:`lowbit.algorithms.mixed_precision.layer_sensitivity` (output MSE, loss change, Hessian trace
x weight error, on 512 labelled training images) are compared with the *true* top-1 drop on the
10 000 test images when only that layer's weights are quantized to 2 bits (everything else float):
Spearman rank correlation per estimator. The same for 2-bit input activations.

    python bench/sensitivity.py                        # fmnist-resnet, base recipe w4a8
    python bench/sensitivity.py --model fmnist-mobilenet --observer minmax

Writes bench/results/sensitivity_MODEL.json and docs/img/sensitivity_MODEL.png, prints the ranked table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

import lowbit
from lowbit.algorithms.mixed_precision import ESTIMATORS, layer_sensitivity
from lowbit.algorithms.mixed_precision.sensitivity import LayerProbe
from lowbit.data import load_fashion_mnist
from lowbit.io import atomic_write_text, save_figure
from lowbit.zoo import load_model

ROOT = Path(__file__).resolve().parent.parent


def true_drops(probe: LayerProbe, test, bits: int, kind: str) -> dict[str, float]:
    """Top-1 drop (pp) on ``test`` with only one layer's weights (or inputs) at ``bits``."""
    fp = lowbit.evaluate(probe.model, test)
    out = {}
    for n in probe.layers:
        kw = {"weight_bits": bits} if kind == "weight" else {"act_bits": bits}
        with probe.quantized(n, **kw) as m:
            out[n] = fp - lowbit.evaluate(m, test)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fmnist-resnet")
    ap.add_argument("--recipe", default="w4a8", help="base PTQ recipe (its weight / activation specs)")
    ap.add_argument("--observer", default=None, help="override the weight observer (e.g. minmax)")
    ap.add_argument("--bits", type=int, default=2, help="the width whose true drop is measured")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--vectors", type=int, default=16, help="Hutchinson vectors per batch")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model)
    base = lowbit.load_recipe(args.recipe)
    if args.observer:
        base = base.replace(weight=base.weight.replace(observer=args.observer))
    train = load_fashion_mnist("train").subset(args.samples, seed=0)
    test = load_fashion_mnist("test")
    data = [(train.images[i:i + 128], train.labels[i:i + 128]) for i in range(0, args.samples, 128)]
    timings = {}
    reps = {}
    for est in ESTIMATORS:
        t0 = time.perf_counter()
        reps[est] = layer_sensitivity(model, base, data, bits=(2, 3, 4, 6, 8), estimators=(est,), max_samples=args.samples,
                                      hutchinson_vectors=args.vectors)
        timings[est] = time.perf_counter() - t0
    probe = LayerProbe(model, base, [x for x, _ in data], (args.bits,))
    rows = {}
    for kind in ("weight", "activation"):
        drops = true_drops(probe, test, args.bits, kind)
        layers = list(drops)
        corr = {}
        for est, rep in reps.items():
            table = rep.weight if kind == "weight" else rep.activation
            if est in table:
                rho = spearmanr([table[est][n][args.bits] for n in layers], [drops[n] for n in layers]).statistic
                corr[est] = float(rho)
        rows[kind] = {"true_drop_pp": drops, "spearman": corr,
                      "estimates": {est: {n: (rep.weight if kind == "weight" else rep.activation)[est][n][args.bits] for n in layers}
                                    for est, rep in reps.items() if est in (rep.weight if kind == "weight" else rep.activation)}}
    merged = reps["hessian"]
    for est in ("mse", "loss"):
        merged.weight[est] = reps[est].weight[est]
        merged.activation[est] = reps[est].activation[est]
    result = {"model": args.model, "recipe": args.recipe, "weight_observer": base.weight.observer, "bits": args.bits,
              "samples": args.samples, "hutchinson_vectors": args.vectors, "seconds": timings,
              "float_accuracy": lowbit.evaluate(probe.model, test), "rows": rows, "report": merged.to_dict()}
    out = ROOT / "bench" / "results" / f"sensitivity_{args.model}.json"
    atomic_write_text(out, json.dumps(result, indent=1))

    print(f"\n{args.model}: single-layer W{args.bits} / A{args.bits} sensitivity vs the true top-1 drop on 10k test images\n")
    print(merged.markdown(args.bits))
    print("\n| quantized | " + " | ".join(f"Spearman {e}" for e in ESTIMATORS) + " | max true drop pp |")
    print("|---|" + "---|" * (len(ESTIMATORS) + 1))
    for kind, r in rows.items():
        print(f"| {kind}s at {args.bits} bits | " + " | ".join(f"{r['spearman'].get(e, float('nan')):.3f}" for e in ESTIMATORS)
              + f" | {max(r['true_drop_pp'].values()):.2f} |")
    print("\nseconds per estimator (all layers x widths 2,3,4,6,8): " + ", ".join(f"{e} {t:.1f}" for e, t in timings.items()))
    _plot(result, ROOT / "docs" / "img" / f"sensitivity_{args.model}.png")
    print(f"wrote {out}")


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = result["rows"]["weight"]
    layers = list(r["true_drop_pp"])
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(layers)), 3.6))
    width = 0.8 / (1 + len(r["estimates"]))
    xs = range(len(layers))
    drop = [r["true_drop_pp"][n] for n in layers]
    top = max(max(drop), 1e-9)
    ax.bar([x - 0.4 + width / 2 for x in xs], [d / top for d in drop], width, label="true drop (scaled)", color="black")
    for i, (est, vals) in enumerate(r["estimates"].items(), 1):
        v = [vals[n] for n in layers]
        m = max(max(v), 1e-30)
        ax.bar([x - 0.4 + width / 2 + i * width for x in xs], [t / m for t in v], width,
               label=f"{est} (rho {r['spearman'][est]:.2f})")
    ax.set_xticks(list(xs), layers, rotation=70, fontsize=7)
    ax.set_ylabel("relative to the largest")
    ax.set_title(f"{result['model']}: one layer's weights at W{result['bits']}, the rest float")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

"""Benchmark: compression beyond quantization (issue 8) on fmnist-resnet — Deep Compression, unstructured and
structured pruning, low-rank factorization, and pruning + quantization against either alone at equal size.

Every run starts from the float zoo model, fine-tunes on the 60 000 training images (Adam, half-cosine decay)
and reports on the 10 000 test images the shared record of :func:`lowbit.report.compression.measure_compression`:
accuracy vs float, parameters kept, MACs ratio, the stored ``.lbc`` file vs the dense fp32 one, and (structured
pruning, low-rank) the ONNX Runtime fp32 latency ratio measured in the same run (interleaved, median of 20).

    python bench/compression.py --run dc-90-b4 --method dc --sparsity 0.9 --bits 4
    python bench/compression.py --run prune-95 --method prune --sparsity 0.95
    python bench/compression.py --run share-b2 --method dc --sparsity 0 --bits 2 --epochs 0      # quantization only
    python bench/compression.py --run channels-taylor-50 --method structured --criterion taylor --mac-ratio 0.5
    python bench/compression.py --run channels-taylor-lat55 --method structured --criterion taylor --latency-ratio 0.55
    python bench/compression.py --run lowrank-tucker-e90 --method lowrank --energy 0.9
    python bench/compression.py --run joint-size-25 --method joint --budget 0.25      # 1/4 of the W8 weight bytes
    python bench/compression.py --table

Writes bench/results/compression.json (one entry per --run, replaced when re-run); --table prints the
Markdown tables (--report DIR writes compression.html with the plots).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import lowbit
from lowbit.data import load_fashion_mnist
from lowbit.io import atomic_write_text
from lowbit.report.compression import measure_compression
from lowbit.zoo import load_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "compression.json"


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    if args.train_size:
        train = train.subset(args.train_size, seed=1)
    base = load_model(args.model).eval()
    example = test.images[:1]
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    latency = False
    if args.method == "dc":
        cfg = lowbit.DeepCompressionConfig(sparsity=args.sparsity, bits=args.bits, epochs=args.epochs, share_epochs=args.share_epochs,
                                           lr=args.lr, schedule="gradual" if args.epochs and args.sparsity else "oneshot",
                                           distill=args.distill, scope=args.scope)
        model = lowbit.compress(model, cfg, train, val_data=test, model_spec=args.model, progress=False)
    elif args.method == "prune":
        cfg = lowbit.PruneConfig(sparsity=args.sparsity, scope=args.scope, schedule="gradual" if args.epochs else "oneshot",
                                 epochs=args.epochs, lr=args.lr, distill=args.distill)
        model = lowbit.prune(model, cfg, train, progress=False)
    elif args.method == "structured":
        if args.ratios:
            budget = {"ratios": json.loads(args.ratios)}
        elif args.latency_ratio:
            budget = {"latency_ratio": args.latency_ratio}
        else:
            budget = {"mac_ratio": args.mac_ratio or 0.5}
        cfg = lowbit.StructuredPruneConfig(criterion=args.criterion, round_to=args.round_to, epochs=args.epochs, lr=args.lr,
                                           distill=args.distill, **budget)
        model = lowbit.prune(model, cfg, train, example=example, progress=False)
        latency = True
    elif args.method == "lowrank":
        from lowbit.algorithms.lowrank import LowRankConfig, decompose

        kw = {"rank_by": "budget", "mac_ratio": args.mac_ratio} if args.mac_ratio else {"rank_by": "energy", "energy": args.energy}
        cfg = LowRankConfig(method=args.lowrank_method, **kw)
        model = decompose(model, cfg, example=test.images[:8])
        info = model.lowbit_info
        if args.epochs:
            hist = lowbit.train(model, train, epochs=args.epochs, lr=args.lr, teacher=copy.deepcopy(base) if args.distill else None,
                                distill_weight=0.7, progress=False)
            info["train"] = hist
        info["config"] = cfg.to_dict()
        model.lowbit_info = info
        latency = True
    elif args.method == "joint":
        from lowbit.algorithms.mixed_precision.joint import _Costs, joint_search, joint_sensitivity

        scan = train.subset(1024, seed=2)
        rep = joint_sensitivity(model, scan, ratios=(0.0, 0.25, 0.5, 0.75), bits=(2, 4, 8), max_samples=1024)
        import numpy as np

        full = _Costs(rep).evaluate(np.zeros((1, len(rep.groups)), dtype=int), np.full((1, len(rep.layers)), rep.bits.index(8)))
        budget = {"size": float(full["size"][0]) * args.budget}
        plan = joint_search(rep, budget)
        print(json.dumps(plan.to_dict(), indent=1))
        model = lowbit.prune(model, plan.prune_config(epochs=args.epochs, lr=args.lr, distill=args.distill), train, example=example,
                             progress=False)
        qcfg = plan.quant_config(lowbit.load_recipe("w8a8"))
        model = lowbit.quantize_(model, qcfg, data=train.subset(512, seed=3))
        model.lowbit_info.update(plan=plan.to_dict(), sensitivity=rep.to_dict())
        latency = True
    else:
        raise SystemExit(f"unknown --method {args.method}")
    seconds = time.perf_counter() - t0
    r = measure_compression(base, model, test, example=example, method=args.method, model_name=args.model, info=model.lowbit_info,
                            latency=latency)
    r.update(name=args.run, seconds=seconds, epochs=args.epochs, argv=vars(args))
    return r


def table(results: dict) -> str:
    rows = ["| run | method | accuracy % | vs float pp | nonzero params | MACs | file KiB | x smaller | ORT latency | train s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results.values(), key=lambda r: (r["method"], -r["size_bytes"]["ratio"])):
        p, lat = r["parameters"], r.get("latency")
        rows.append(f"| {r['name']} | {r['method']} | {r['accuracy']:.2f} | {-r['accuracy_drop_pp']:+.2f} | "
                    f"{p['nonzero_after'] / p['before']:.3f} | {r['macs']['ratio']:.3f} | {r['size_bytes']['compressed'] / 1024:.1f} | "
                    f"{r['size_bytes']['ratio']:.1f} | {'-' if not lat else format(lat['ratio'], '.3f') + 'x'} | {r['seconds']:.0f} |")
    for r in results.values():
        stages = r["details"].get("stages")
        if stages:
            rows += ["", f"Deep Compression stages of {r['name']}:", "", "| stage | file bytes | x smaller | accuracy % |", "|---|---|---|---|"]
            rows += [f"| {s['stage']} | {s['file_bytes']} | {s['ratio']:.1f} | {s.get('accuracy', float('nan')):.2f} |" for s in stages]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="name of this run (its key in the JSON)")
    ap.add_argument("--method", choices=["dc", "prune", "structured", "lowrank", "joint"])
    ap.add_argument("--budget", type=float, default=0.25, help="joint: size budget as a fraction of the all-8-bit weights")
    ap.add_argument("--model", default="fmnist-resnet")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--scope", default="global")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--criterion", default="taylor")
    ap.add_argument("--mac-ratio", type=float, default=None)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--latency-ratio", type=float, default=None, help="structured: latency budget measured on ORT")
    ap.add_argument("--ratios", default=None, help='structured: per-group removal ratios as JSON, e.g. \'{"stem.0": 0.25}\'')
    ap.add_argument("--energy", type=float, default=0.9)
    ap.add_argument("--lowrank-method", default="auto")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--share-epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--report", default=None)
    args = ap.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    if args.run:
        r = run(args)
        results[args.run] = r
        atomic_write_text(OUT, json.dumps(results, indent=1, default=float) + "\n")
        print(table({args.run: r}))
    if args.table:
        print(table(results))
    if args.report:
        from lowbit.report.html import write_compression_report

        print(write_compression_report(list(results.values()), args.report)["html"])


if __name__ == "__main__":
    main()

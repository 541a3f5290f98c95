"""Benchmark: XNOR-popcount GEMM (lowbit.runtime.xnor) vs fp32 ``torch.mm`` on the same ±1 problem.

For each shape ``(M, K) · (K, N)`` the operands are random ±1 matrices; the weights (``N x K``) are
packed once up front, as a deployed binary layer holds them. Timed, interleaved in one run
(float, xnor, xnor + packing, per repeat), median of ``--repeats`` after ``--warmup`` calls:

* ``float_ms``: ``torch.mm(A, B)`` in fp32 — the float simulation of the ±1 layer;
* ``xnor_ms``: ``xnor_matmul(pack(A), pack(B^T), K)`` with both operands already packed;
* ``xnor_pack_ms``: the same including ``pack_signs`` of the fp32 activations ``A``;
* ``speedup`` = ``float_ms / xnor_ms`` (and ``speedup_with_packing``);
* ``bit_exact``: ``torch.equal`` of the int32 xnor result and the fp32 result cast to int32.

A last row times the whole layer, ``binary_conv2d`` (word-level im2col, padding mask, GEMM,
activation packing included) against ``F.conv2d`` on the ±1 tensors.

    python bench/xnor_kernel.py [--threads 2] [--repeats 15]

``--network FILE.lowbit`` instead runs a whole converted binary network (e.g. the ``xnor`` model that
``bench/qat_table.py`` writes to bench/results/qat_models/xnor.lowbit) both ways on the 10k test
images: the float simulation and :func:`lowbit.runtime.to_bitwise` (binary layers on the kernels);
accuracy of each, top-1 agreement, the largest logit difference, and the latency ratio at batch
256 (interleaved medians); writes bench/results/xnor_network.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lowbit.runtime.xnor import binarize, binary_conv2d, pack_conv_weight, pack_signs, xnor_backend, xnor_matmul

HERE = Path(__file__).parent
OUT = HERE / "results" / "xnor_kernel.json"
GEMMS = {"linear 256x4096 . 4096x4096": (256, 4096, 4096), "conv-like 256*196x2304 . 2304x256": (256 * 196, 2304, 256)}
CONV = {"name": "binary_conv2d 64x256x14x14, 256x256x3x3, pad 1", "x": (64, 256, 14, 14), "w": (256, 256, 3, 3), "padding": 1}


def pm1(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def race(fns: dict, warmup: int, repeats: int) -> tuple[dict, dict]:
    """Median ms of each function, calls interleaved so background load hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            ms, outs[k] = timed(fn)
            times[k].append(ms)
    return {k: statistics.median(v) for k, v in times.items()}, outs


def numba_version() -> str | None:
    try:
        return importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:
        return None


def network(path: str, warmup: int, repeats: int) -> None:
    import lowbit
    from lowbit.data import load_fashion_mnist
    from lowbit.runtime import to_bitwise

    sim = lowbit.load(path).eval()
    fast, info = to_bitwise(sim)
    test = load_fashion_mnist("test")
    with torch.no_grad():
        ys = torch.cat([sim(test.images[i : i + 1000]) for i in range(0, len(test), 1000)])
        yb = torch.cat([fast(test.images[i : i + 1000]) for i in range(0, len(test), 1000)])
        x = test.images[:256]
        med, _ = race({"float_sim": lambda: sim(x), "bitwise": lambda: fast(x)}, warmup, repeats)
    r = {"model": str(path), "bitwise_layers": info["bitwise_layers"], "kept": info["kept"],
         "accuracy_sim": float((ys.argmax(1) == test.labels).float().mean() * 100),
         "accuracy_bitwise": float((yb.argmax(1) == test.labels).float().mean() * 100),
         "top1_agreement": float((ys.argmax(1) == yb.argmax(1)).float().mean() * 100),
         "max_abs_logit_diff": float((ys - yb).abs().max()), "latency_bitwise_over_sim_b256": med["bitwise"] / med["float_sim"],
         "threads": torch.get_num_threads(), "backend": xnor_backend()}
    for k, v in r.items():
        print(f"{k:32s} {v}")
    (HERE / "results" / "xnor_network.json").write_text(json.dumps(r, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--network", default=None, help="a converted binary model (.lowbit): run it bitwise vs simulated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # the numba kernels follow torch's thread count
    backend = xnor_backend()  # compiles / loads the kernels outside the timings
    if args.network:
        network(args.network, args.warmup, max(5, args.repeats // 3))
        return
    rows = []
    for name, (M, K, N) in GEMMS.items():
        a, w = pm1(M, K, seed=0), pm1(N, K, seed=1)
        b = w.T.contiguous()  # (K, N): the float GEMM's best layout
        a_p, w_p = pack_signs(a), pack_signs(w)
        med, outs = race(
            {
                "float": lambda a=a, b=b: torch.mm(a, b),
                "xnor": lambda a_p=a_p, w_p=w_p, K=K: xnor_matmul(a_p, w_p, K),
                "xnor_pack": lambda a=a, w_p=w_p, K=K: xnor_matmul(pack_signs(a), w_p, K),
            },
            args.warmup, args.repeats,
        )
        ref = outs["float"].to(torch.int32)
        rows.append({
            "shape": name, "M": M, "K": K, "N": N,
            "float_ms": med["float"], "xnor_ms": med["xnor"], "xnor_pack_ms": med["xnor_pack"],
            "speedup": med["float"] / med["xnor"], "speedup_with_packing": med["float"] / med["xnor_pack"],
            "bit_exact": bool(torch.equal(outs["xnor"], ref) and torch.equal(outs["xnor_pack"], ref)),
        })
    x, w = torch.randn(*CONV["x"], generator=torch.Generator().manual_seed(2)), torch.randn(*CONV["w"], generator=torch.Generator().manual_seed(3))
    xs, ws, w_p = binarize(x), binarize(w), pack_conv_weight(w)
    med, outs = race(
        {
            "float": lambda: F.conv2d(xs, ws, padding=CONV["padding"]),
            "xnor_pack": lambda: binary_conv2d(x, w_p, w.shape, padding=CONV["padding"]),
        },
        args.warmup, max(10, args.repeats // 2),
    )
    rows.append({
        "shape": CONV["name"], "float_ms": med["float"], "xnor_ms": None, "xnor_pack_ms": med["xnor_pack"],
        "speedup": None, "speedup_with_packing": med["float"] / med["xnor_pack"],
        "bit_exact": bool(torch.equal(outs["xnor_pack"], outs["float"])),
    })

    print(f"backend {backend}, {args.threads} threads, median of {args.repeats} (conv {max(10, args.repeats // 2)}), load avg {os.getloadavg()[0]:.2f}")
    print(f"{'shape':48s} {'fp32 ms':>9s} {'xnor ms':>9s} {'+pack ms':>9s} {'speedup':>8s} {'+pack':>7s}  bit-exact")
    for r in rows:
        xn = f"{r['xnor_ms']:9.2f}" if r["xnor_ms"] is not None else f"{'-':>9s}"
        sp = f"{r['speedup']:7.1f}x" if r["speedup"] is not None else f"{'-':>8s}"
        print(f"{r['shape']:48s} {r['float_ms']:9.2f} {xn} {r['xnor_pack_ms']:9.2f} {sp} {r['speedup_with_packing']:6.1f}x  {r['bit_exact']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "backend": backend, "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
        "torch": torch.__version__, "numba": numba_version(), "machine": platform.machine(), "processor": platform.processor(),
        "load_avg_1min_at_end": os.getloadavg()[0],
    }
    OUT.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Float vs quantized on a real runtime: latency ratio at batch 1 and 256, size on disk, BitOPs, energy.

Both models are exported to ONNX (float, and int8 QDQ) and timed in ONNX Runtime in one run:
median over ``repeats`` interleaved rounds, ``calls`` calls per round at batch 1. A model is called
*faster* only when its latency ratio is below ``0.95`` at **both** batch sizes; otherwise the verdict
names the batch size where it is not.

Example:
    >>> from lowbit.report.bench import verdict
    >>> verdict({"latency_ratio_b1": 0.6, "latency_ratio_b256": 1.02})
    'not faster: int8/float latency is 1.02 at batch 256'
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..export import export_onnx
from ..runtime import OrtModel
from .energy import model_energy
from .metrics import bitops

FASTER_BELOW = 0.95


def interleaved_latency(models: dict, x, repeats: int, calls: int) -> dict[str, float]:
    """Median seconds per call of each runner (``run_numpy``), interleaving the runners round by round
    so slow drifts of the machine hit all of them alike; 3 warm-up calls each."""
    for m in models.values():
        for _ in range(3):
            m.run_numpy(x)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                m.run_numpy(x)
            times[k].append((time.perf_counter() - t0) / calls)
    return {k: statistics.median(v) for k, v in times.items()}


def verdict(r: dict) -> str:
    """One line: ``faster`` only if both latency ratios are below 0.95."""
    slow = [(b, r[f"latency_ratio_b{b}"]) for b in (1, 256) if r[f"latency_ratio_b{b}"] >= FASTER_BELOW]
    if not slow:
        return f"faster: int8/float latency {r['latency_ratio_b1']:.2f} at batch 1, {r['latency_ratio_b256']:.2f} at batch 256"
    return "not faster: " + ", ".join(f"int8/float latency is {v:.2f} at batch {b}" for b, v in slow)


@torch.no_grad()
def benchmark(float_model: nn.Module, qmodel: nn.Module, inputs: torch.Tensor, *, repeats: int = 20, threads: int = 2) -> dict:
    """Measure ``qmodel`` against ``float_model`` on ONNX Runtime; ``inputs`` needs >= 256 samples."""
    from ..errors import ConfigError

    if inputs.shape[0] < 256:
        raise ConfigError(f"benchmark needs at least 256 input samples for the batch-256 timing, got {inputs.shape[0]}")
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-bench-"))
    export_onnx(float_model, inputs[:1], tmp / "fp32.onnx", precision="fp32")
    export_onnx(qmodel, inputs[:1], tmp / "int8.onnx")
    models = {k: OrtModel(tmp / f"{k}.onnx", threads=threads) for k in ("fp32", "int8")}
    x = inputs.numpy()
    lat1 = interleaved_latency(models, x[:1], repeats=repeats * 3, calls=10)
    lat256 = interleaved_latency(models, x[:256], repeats=repeats, calls=1)
    ops = bitops(qmodel, inputs[:1])
    r = {
        "runtime": "onnxruntime", "threads": threads,
        "latency_ratio_b1": lat1["int8"] / lat1["fp32"], "latency_ratio_b256": lat256["int8"] / lat256["fp32"],
        "onnx_bytes": {k: (tmp / f"{k}.onnx").stat().st_size for k in models},
        "bitops": ops["bitops"], "fp32_bitops": ops["fp32_bitops"], "macs": ops["macs"],
        "energy_uj": {"fp32": model_energy(float_model, inputs[:1]), "int8": model_energy(qmodel, inputs[:1])},
    }
    r["size_ratio"] = r["onnx_bytes"]["int8"] / r["onnx_bytes"]["fp32"]
    from ..runtime import cpu_features, int8_plan

    features = cpu_features()
    r["cpu"] = features.to_dict()
    r["int8_plan"] = int8_plan(features)
    r["verdict"] = verdict(r)
    return r

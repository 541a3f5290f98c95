"""One result record for every compression method (pruning, low-rank, Deep Compression), so the CLI, the
benchmarks and the HTML report read the same fields.

``measure_compression`` evaluates the float and the compressed model on the same data and counts:

* ``parameters`` — all parameters before / after, and the nonzero ones after;
* ``macs`` — Conv / Linear multiply-accumulates per sample, ``ratio = after / before``;
* ``size_bytes`` — the dense fp32 ``.lbc`` file of the float model vs the compressed model's ``.lbc``
  file (sparse layers stored sparsely, shared weights as Huffman-coded symbols) — or, for a quantized
  model, its packed ``.lowbit`` file (:func:`lowbit.save`) — ``ratio = fp32 / compressed``;
* ``latency`` (optional) — ONNX Runtime fp32, both models timed interleaved in one run (a ratio).

Example:
    >>> import torch
    >>> from lowbit.zoo.models import FmnistMLP
    >>> torch.manual_seed(0) and None
    >>> f, c = FmnistMLP(hidden=32), FmnistMLP(hidden=8)
    >>> data = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,)))]
    >>> r = measure_compression(f, c, data, example=torch.zeros(1, 1, 28, 28), method="demo", model_name="mlp")
    >>> r["macs"]["ratio"] == (784 * 8 + 8 * 10) / (784 * 32 + 32 * 10), r["size_bytes"]["ratio"] > 3.5
    (True, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..nn.layers import is_quant_module
from .metrics import layer_macs


def measure_compression(float_model: nn.Module, model: nn.Module, data: Any, *, example: torch.Tensor, method: str,
                        model_name: str, info: dict | None = None, fp32_accuracy: float | None = None, latency: bool = False,
                        latency_batch: int = 32) -> dict:
    """The shared result record (module docstring). ``info`` (the method's ``lowbit_info``) is kept under
    ``details``; ``fp32_accuracy`` skips re-evaluating the float model."""
    from ..api import evaluate
    from ..export.compressed import encode_compressed

    fp32 = evaluate(float_model, data) if fp32_accuracy is None else fp32_accuracy
    acc = evaluate(model, data)
    m0, m1 = sum(layer_macs(float_model, example).values()), sum(layer_macs(model, example).values())
    p0 = sum(p.numel() for p in float_model.parameters())
    p1 = sum(p.numel() for p in model.parameters())
    nz = sum(int((p != 0).sum()) for p in model.parameters())
    dense, _ = encode_compressed(float_model, layout="dense", coding="fixed", codebook=False)
    if any(is_quant_module(m) for m in model.modules()):  # a quantized model: its packed .lowbit file
        import tempfile
        from pathlib import Path

        from ..export import save

        with tempfile.TemporaryDirectory() as d:
            save(model, Path(d) / "m.lowbit")
            packed = (Path(d) / "m.lowbit").read_bytes()
        pinfo = {"weight_bytes": None, "other_bytes": None}
    else:
        packed, pinfo = encode_compressed(model)
    out = {"model": model_name, "method": method, "fp32_accuracy": fp32, "accuracy": acc, "accuracy_drop_pp": fp32 - acc,
           "parameters": {"before": p0, "after": p1, "nonzero_after": nz},
           "macs": {"before": m0, "after": m1, "ratio": m1 / m0},
           "size_bytes": {"fp32": len(dense), "compressed": len(packed), "ratio": len(dense) / len(packed),
                          "weights": pinfo["weight_bytes"], "other": pinfo["other_bytes"]},
           "details": dict(info or {})}
    out["details"].pop("config", None)
    out["config"] = (info or {}).get("config")
    if latency:
        from .bench import float_latency_ratio

        x = example.expand(latency_batch, *example.shape[1:]).contiguous()
        out["latency"] = float_latency_ratio(float_model, model, x)
    return out

"""Quantize-and-measure: the job behind ``lowbit quantize`` and ``lowbit demo``.

Evaluates the float model and the quantized model on the same test data, and collects the
per-layer diagnostics of the report (SQNR of weights and of layer outputs, clipping ranges,
weight and activation histograms), size and BitOPs.

Example:
    >>> from lowbit.report.experiment import clip_range
    >>> import torch
    >>> from lowbit.quant import IntFormat
    >>> clip_range(torch.tensor(0.5), torch.tensor(2), IntFormat(bits=4, signed=False))
    (-1.0, 6.5)
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ..api import evaluate, quantize_
from ..config import Config
from ..nn.layers import is_quant_module
from ..quant import IntFormat
from ..transform import FoldBatchNorm
from .metrics import bitops, float_size_bytes, quantized_size_bytes, sqnr_db

HIST_BINS = 80


def clip_range(scale: torch.Tensor, zero_point: torch.Tensor, fmt: IntFormat) -> tuple[float, float]:
    """Real range covered by the grid: ``[S (qmin - Z), S (qmax - Z)]`` (envelope over rows)."""
    s = scale.double().reshape(-1)
    z = zero_point.double().reshape(-1)
    return float((s * (fmt.qmin - z)).min()), float((s * (fmt.qmax - z)).max())


def _hist(t: torch.Tensor) -> dict:
    v = t.detach().double().reshape(-1).numpy()
    counts, edges = np.histogram(v, bins=HIST_BINS)
    return {"counts": counts.tolist(), "edges": [float(e) for e in edges]}


@torch.no_grad()
def layer_diagnostics(float_model: nn.Module, qmodel: nn.Module, batch: torch.Tensor) -> list[dict]:
    """Per quantized layer: bits, granularity, weight / output SQNR, clip ranges, histograms.

    The float reference has its BatchNorms folded the same way, so layer outputs are comparable.
    """
    ref = FoldBatchNorm().apply(copy.deepcopy(float_model).eval())
    names = [n for n, m in qmodel.named_modules() if is_quant_module(m)]
    ref_mods = dict(ref.named_modules())
    outs_ref: dict[str, torch.Tensor] = {}
    outs_q: dict[str, torch.Tensor] = {}
    acts: dict[str, torch.Tensor] = {}
    hooks = []
    for n in names:
        qm = qmodel.get_submodule(n)
        hooks.append(qm.register_forward_hook(lambda m, i, o, n=n: outs_q.__setitem__(n, o)))
        hooks.append(qm.register_forward_pre_hook(lambda m, i, n=n: acts.__setitem__(n, i[0])))
        if n in ref_mods:
            hooks.append(ref_mods[n].register_forward_hook(lambda m, i, o, n=n: outs_ref.__setitem__(n, o)))
    try:
        ref(batch)
        qmodel(batch)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for n in names:
        m = qmodel.get_submodule(n)
        row: dict[str, Any] = {"name": n, "type": type(m).__name__.replace("Quant", "")}
        w = m.weight.detach()
        if m.weight_quant is not None:
            spec = m.weight_quant.spec
            wq = m.weight_quant(w)
            row.update(
                weight_bits=spec.format.bits, granularity=spec.granularity.name, weight_spec=spec.describe(),
                weight_sqnr_db=round(sqnr_db(w, wq), 2),
                weight_clip=clip_range(m.weight_quant.scale, m.weight_quant.zero_point, spec.format),
            )
        else:
            row.update(weight_bits=32, granularity="float", weight_spec="float", weight_sqnr_db=None, weight_clip=None)
        row["weight_hist"] = _hist(w)
        row["params"] = w.numel()
        aq = m.input_quant
        if aq is not None and aq.scale is not None:
            row.update(activation_bits=aq.spec.format.bits, activation_spec=aq.spec.describe(),
                       activation_clip=clip_range(aq.scale, aq.zero_point, aq.spec.format))
        else:
            row.update(activation_bits=32 if aq is None else aq.spec.format.bits,
                       activation_spec="float" if aq is None else aq.spec.describe(), activation_clip=None)
        row["activation_hist"] = _hist(acts[n]) if n in acts else None
        row["output_sqnr_db"] = round(sqnr_db(outs_ref[n], outs_q[n]), 2) if n in outs_ref and n in outs_q else None
        rows.append(row)
    return rows


def quantize_and_measure(
    float_model: nn.Module,
    config: Config,
    calib: Any,
    test: Any,
    *,
    recipe: str = "custom",
    model_name: str = "model",
    fp32_accuracy: float | None = None,
) -> tuple[nn.Module, dict]:
    """Quantize a copy of ``float_model`` with ``config`` on ``calib``; evaluate both on ``test``.

    Returns ``(quantized_model, result)`` where ``result`` holds the fields written by
    ``lowbit quantize --json``: ``fp32_accuracy``, ``quantized_accuracy``, ``accuracy_drop_pp``,
    ``quantize_seconds``, ``size_bytes``, ``bitops``, ``recipe`` and per-layer diagnostics.
    """
    float_model = float_model.eval()
    if fp32_accuracy is None:
        fp32_accuracy = evaluate(float_model, test, progress="evaluating fp32")
    work = copy.deepcopy(float_model)
    t0 = time.perf_counter()
    qmodel = quantize_(work, config, data=calib)
    seconds = time.perf_counter() - t0
    q_acc = evaluate(qmodel, test, progress="evaluating quantized")
    first = next(iter(calib.batches(64))) if hasattr(calib, "batches") else None
    example = first[0] if first is not None else None
    info = qmodel.lowbit_info
    result = {
        "model": model_name,
        "recipe": recipe,
        "fp32_accuracy": round(fp32_accuracy, 4),
        "quantized_accuracy": round(q_acc, 4),
        "accuracy_drop_pp": round(fp32_accuracy - q_acc, 4),
        "quantize_seconds": round(seconds, 3),
        "calibration_samples": info.get("calibration_samples", 0),
        "size_bytes": {"fp32": float_size_bytes(float_model), "quantized": quantized_size_bytes(qmodel)},
        "folded_batchnorms": len(info["folded"]),
        "quantized_adds": len(info["adds"]),
        "skipped_layers": info["skipped"],
        "adjusted_layers": info["adjusted"],
        "config": info["config"],
    }
    if example is not None:
        result["bitops"] = bitops(qmodel, example)
        result["layers"] = layer_diagnostics(float_model, qmodel, example)
    return qmodel, result

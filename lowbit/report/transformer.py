"""Quantize a text encoder and measure it against the float model: embedding fidelity on a held-out part of
the corpus, the stored size (the packed ``.lowbit`` file against the fp32 state dict) and the time taken.

The corpus is split deterministically: every 4th passage (``i % 4 == 3``) calibrates, the others evaluate,
so calibration and evaluation never share a text.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DataError


def split_corpus(texts: list[str], every: int = 4) -> tuple[list[str], list[str]]:
    """``(calibration, evaluation)``: passages ``i % every == every - 1`` calibrate, the rest evaluate.

    Example:
        >>> split_corpus([str(i) for i in range(8)])
        (['3', '7'], ['0', '1', '2', '4', '5', '6'])
    """
    if len(texts) < every * 2:
        raise DataError(f"the corpus has {len(texts)} passages; at least {every * 2} are needed to calibrate and evaluate")
    calib = [t for i, t in enumerate(texts) if i % every == every - 1]
    return calib, [t for i, t in enumerate(texts) if i % every != every - 1]


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as stored (every parameter and buffer at its dtype)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if t is not None)


def packed_bytes(qmodel: nn.Module) -> int:
    """Length of the packed ``.lowbit`` file of a quantized model (written to a temporary folder)."""
    from ..export import save

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "model.lowbit"
        save(qmodel, p)
        return p.stat().st_size


@torch.no_grad()
def quantize_text_and_measure(float_model: nn.Module, config: Any, texts: list[str], *, model_name: str = "",
                              recipe: str = "", progress: bool = False, reference: torch.Tensor | None = None) -> tuple[nn.Module, dict]:
    """Quantize a copy of ``float_model`` (a ``TextEncoder``) with ``config`` on the calibration split of
    ``texts`` and report fidelity (:func:`lowbit.report.fidelity.embedding_fidelity`) on the evaluation split,
    the packed size against fp32 and the quantization time.

    Returns ``(quantized model, result)``. ``reference``: the float embeddings of the evaluation split, if
    already computed.

    Example (needs ``lowbit[transformers]``; about a minute on 2 cores):
        >>> from lowbit.zoo.text import load_text_encoder  # doctest: +SKIP
        >>> from lowbit.data.text import load_corpus  # doctest: +SKIP
        >>> from lowbit.algorithms.transformer import TransformerPTQConfig  # doctest: +SKIP
        >>> q, r = quantize_text_and_measure(load_text_encoder(), TransformerPTQConfig(), load_corpus())  # doctest: +SKIP
        >>> r["fidelity"]["cosine_mean"] > 0.99  # doctest: +SKIP
        True
    """
    from ..algorithms.transformer import quantize_transformer
    from .fidelity import embedding_fidelity

    calib, evaluation = split_corpus(list(texts))
    ref = reference if reference is not None else float_model.encode(evaluation)
    t0 = time.perf_counter()
    qmodel = quantize_transformer(copy.deepcopy(float_model), config, calib, progress=progress)
    seconds = time.perf_counter() - t0
    test = qmodel.encode(evaluation)
    fid = embedding_fidelity(ref, test)
    fp32 = state_bytes(float_model)
    packed = packed_bytes(qmodel)
    info = qmodel.lowbit_info
    bits = {n: e["weight_bits"] for n, e in info["layers"].items()}
    result = {
        "model": model_name, "recipe": recipe, "kind": config.kind, "method": config.method,
        "weight": config.weight.describe(), "activation": config.activation.describe() if config.activation else "float",
        "smooth_alpha": config.smooth_alpha,
        "fidelity": fid, "calibration_texts": len(calib), "evaluation_texts": len(evaluation),
        "size_bytes": {"fp32": fp32, "packed": packed, "ratio": packed / fp32},
        "quantize_seconds": seconds, "layers_quantized": len(bits), "layer_bits": bits,
        "sensitive": info.get("sensitive", []), "skipped": info["skipped"], "embeddings": info["embeddings"],
        "config": config.to_dict(),
    }
    return qmodel, result

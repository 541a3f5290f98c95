"""The Deep Compression pipeline (Han et al. 2016): ``lowbit.compress(model, DeepCompressionConfig(), data)``.

1. **Prune** — magnitude masks, fine-tuned (:func:`lowbit.prune`; gradual global 90 % by default).
2. **Fold BatchNorm** — ``W' = W gamma / sigma`` per output channel (zeros stay zeros), one bias left.
3. **Share** — per-layer k-means of the nonzero weights into ``2^b - 1`` centroids (linear init) + the
   zero; centroid fine-tuning with the gradient summed per cluster (:mod:`.sharing`).
4. **Huffman** — the stored symbols and relative-index gaps are Huffman coded (:mod:`lowbit.export.compressed`).

The size after every stage is the length of the real ``.lbc`` file that stage's options write
(fp32 dense -> sparse fp32 with fixed-width relative indices -> shared ``b``-bit symbols -> Huffman), so the
table matches the paper's. The returned model is a plain float model whose weights are exactly the
stored ones: :func:`lowbit.load_compressed` gives it back bit for bit.

Example:
    >>> import torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> torch.manual_seed(0) and None
    >>> cfg = lowbit.DeepCompressionConfig(sparsity=0.9, schedule="oneshot", epochs=0, share_epochs=0)
    >>> m = lowbit.compress(FmnistMLP(), cfg)
    >>> [s["stage"] for s in m.lowbit_info["stages"]]
    ['original', 'pruned', 'shared', 'huffman']
    >>> m.lowbit_info["stages"][-1]["ratio"] > 20
    True
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from torch import nn

from ...errors import ConfigError
from ...export.compressed import encode_compressed
from ..pruning.config import PruneConfig
from ..pruning.handler import _fine_tune, prune
from .config import DeepCompressionConfig
from .sharing import share_weights, unshare


def compress(model: nn.Module, config: DeepCompressionConfig, data: Any = None, *, val_data: Any = None,
             model_spec: str | None = None, transform_fn: Callable | None = None, progress: bool = True) -> nn.Module:
    """Run the pipeline on ``model`` in place (BatchNorms folded: use the returned model) and return it with
    ``lowbit_info["stages"]`` — per stage ``stage, file_bytes, ratio`` (vs the dense fp32 file of the original),
    ``sparsity`` and, with ``val_data``, ``accuracy`` — plus per-layer sharing stats and the training history.
    Save the result with :func:`lowbit.save_compressed` (the ``huffman`` stage's file).

    Raises:
        ConfigError: a config of another kind, fine-tuning epochs without data.
    """
    from ...api import evaluate
    from ...transform import FoldBatchNorm
    from ..pruning.unstructured import layer_sparsity

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, DeepCompressionConfig):
        raise ConfigError(f"lowbit.compress takes a DeepCompressionConfig, got {type(config).__name__}")
    if (config.epochs or config.share_epochs) and data is None:
        raise ConfigError("the pipeline fine-tunes after pruning and sharing: pass data= (training batches), "
                          "or set epochs: 0 and share_epochs: 0 with schedule: oneshot")
    t0 = time.perf_counter()
    teacher = copy.deepcopy(model).eval() if config.distill else None
    stages: list[dict] = []

    def stage(name: str, m: nn.Module, **encode: Any) -> None:
        blob, info = encode_compressed(m, model_spec=model_spec, **encode)
        row = {"stage": name, "file_bytes": len(blob), "weight_bytes": info["weight_bytes"], "other_bytes": info["other_bytes"]}
        if val_data is not None:
            row["accuracy"] = evaluate(m, val_data)
        stages.append(row)

    stage("original", model, layout="dense", coding="fixed", codebook=False)
    pcfg = PruneConfig(sparsity=config.sparsity, scope=config.scope, sparsities=config.sparsities, schedule=config.schedule,
                       epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, distill=config.distill,
                       temperature=config.temperature, distill_weight=config.distill_weight, layers=config.layers,
                       exclude=config.exclude)
    prune(model, pcfg, data, val_data=None, transform_fn=transform_fn, progress=progress)
    prune_info = model.lowbit_info
    names = prune_info["layers"]
    folded = []
    if config.fold_bn:
        fb = FoldBatchNorm()
        model = fb.apply(model)
        folded = fb.folded
    stage("pruned", model, layout="auto", coding="fixed", codebook=False)
    unknown = sorted(set(config.layer_bits) - set(names))
    if unknown:
        raise ConfigError(f"layer_bits name layers that are not compressed: {unknown}; compressed layers are {names}")
    sharing = share_weights(model, names, {n: config.layer_bits.get(n, config.bits) for n in names})
    share_hist = None
    if config.share_epochs:
        tuned = config.replace(epochs=config.share_epochs, lr=config.share_lr)
        share_hist = _fine_tune(model, tuned, data, teacher, val_data=None, transform_fn=transform_fn, progress=progress)
    unshare(model)
    stage("shared", model, layout="auto", coding="fixed", codebook=True, index_bits=config.index_bits)
    stage("huffman", model, layout="auto", coding=config.coding, codebook=True, index_bits=config.index_bits)
    base = stages[0]["file_bytes"]
    for row in stages:
        row["ratio"] = base / row["file_bytes"]
    model.lowbit_info = {"method": "deep-compression", "stages": stages, "sparsity": layer_sparsity(model, names),
                         "sharing": sharing, "folded_bn": [list(p) for p in folded], "prune": {"train": prune_info["train"]},
                         "share": {"train": share_hist}, "seconds": time.perf_counter() - t0, "config": config.to_dict()}
    return model

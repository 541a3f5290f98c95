"""Sharded calibration: every rank observes its share of the calibration set; the observers' statistics
are all-reduced so every rank ends with the quantization parameters of the whole set.

Statistics and how they combine (``r`` runs over ranks):

* min-max (``minmax``): ``lo = min_r lo_r``, ``hi = max_r hi_r`` — all-reduce MIN / MAX. Min and max do not
  depend on order, so the result is **bit-identical** to one process calibrating on the whole set with
  :func:`lowbit.calibrate`.
* histograms (``percentile``, ``mse``, ``entropy``, ``aciq``; per tensor or per channel): two passes. Pass 1 finds the global range
  as above; pass 2 counts every value into fixed bins on that range
  (:meth:`~lowbit.observe.histogram.HistogramObserver.fix_range`) and the counts are all-reduced with SUM
  (float64 counts of integers: exact). The histogram of the shards is then exactly the histogram of the
  whole set, and so is every range proposed from it: bit-identical to ``calibrate_sharded`` in one
  process. (:func:`lowbit.calibrate`'s one-pass streaming histogram re-bins whenever the range grows, so
  it depends on batch order; its clipping ranges can differ from the exact ones — usually slightly.)
* the moving average (``ema``) depends on batch order: it has no sharded equivalent and is refused.

Example (one process: the whole set is this rank's shard):
    >>> import copy, torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> torch.manual_seed(0) and None
    >>> f, x = FmnistMLP(), torch.randn(64, 1, 28, 28)
    >>> a = lowbit.quantize_(copy.deepcopy(f), lowbit.PTQConfig(), data=[x])               # min-max observers
    >>> b = lowbit.quantize_(copy.deepcopy(f), lowbit.PTQConfig(), calibrate=False)
    >>> calibrate_sharded(b, [x[:40], x[40:]])
    64
    >>> all(torch.equal(p.scale, q.scale) for p, q in zip(lowbit.activation_quantizers(a), lowbit.activation_quantizers(b)))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import CalibrationError, ConfigError
from ..nn import ActQuant
from ..observe.histogram import HistogramObserver
from ..observe.minmax import MinMaxObserver, MovingAverageMinMaxObserver
from .runtime import active, agree, collective_guard, rank, together, world_size


def shard_batches(batches: list[torch.Tensor], rank_: int | None = None, world: int | None = None) -> list[torch.Tensor]:
    """This rank's share of a list of input batches: every batch cut into ``world`` near-equal slices
    along dim 0 (``torch.tensor_split``), slice ``rank`` kept, empty slices dropped. The shares of all ranks
    together hold every sample exactly once.

    >>> [b.tolist() for b in shard_batches([torch.arange(5.0)], 1, 2)]
    [[3.0, 4.0]]
    """
    r = rank() if rank_ is None else rank_
    n = world_size() if world is None else world
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < n:
        raise ConfigError(f"shard_batches needs 0 <= rank < world (integers), got rank={r!r}, world={n!r}")
    if not all(isinstance(b, torch.Tensor) for b in batches):
        raise ConfigError("shard_batches takes a list of input tensors (batches); use lowbit.api.collect_inputs(data) first")
    out = [b.tensor_split(n)[r] for b in batches]
    return [b for b in out if b.shape[0] > 0]


def _quantizers(model: nn.Module) -> list[ActQuant]:
    return [m for m in model.modules() if isinstance(m, ActQuant) and not m.spec.dynamic and m.grid_source is None]


def _all_reduce(obs: list, ops: dict[str, dist.ReduceOp]) -> None:
    """All-reduce the tensor attribute ``name`` of every observer with ``ops[name]`` (the observers' tensors
    concatenated: one collective per attribute) and their batch counts with SUM."""
    if not active() or not obs:
        return
    for name, op in ops.items():
        parts = [getattr(o, name) for o in obs]
        flat = torch.cat([p.reshape(-1) for p in parts])
        dist.all_reduce(flat, op=op)
        for o, p, chunk in zip(obs, parts, flat.split([p.numel() for p in parts]), strict=True):
            setattr(o, name, chunk.reshape(p.shape))
    n = torch.tensor([o.num_batches for o in obs], dtype=torch.int64)
    dist.all_reduce(n, op=dist.ReduceOp.SUM)
    for o, k in zip(obs, n.tolist(), strict=True):
        o.num_batches = int(k)


@torch.no_grad()
def _run(model: nn.Module, inputs: list[torch.Tensor]) -> None:
    for x in inputs:
        model(x)


def _check_everyone_observed(qs: list[ActQuant], names: dict[int, str]) -> None:
    """Every quantizer must have seen data on every rank (else a rank has no range to contribute);
    decided on the gathered counts, so every rank raises the same error."""
    seen = torch.tensor([int(q.observer is not None and q.observer.num_batches > 0) for q in qs], dtype=torch.int64)
    low = seen.clone()
    if active():
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
    missing = [names[id(q)] for q, s in zip(qs, low.tolist(), strict=True) if not s]
    if missing:
        raise CalibrationError(f"activation quantizers saw no data on at least one rank: {missing[:5]}; give every rank at "
                               "least one calibration batch that reaches every layer")


def calibrate_sharded(
    model: nn.Module,
    data: Any,
    *,
    transform_fn: Callable[[Any], torch.Tensor] | None = None,
    max_samples: int | None = None,
    shard: bool = True,
) -> int:
    """Calibrate ``model``'s activation quantizers on ``data`` split over the ranks (module docstring).

    Args:
        model: a model prepared with ``lowbit.quantize_(..., calibrate=False)`` (the same on every rank).
        data: the calibration batches. ``shard=True``: every rank passes the whole set and keeps its share
            (:func:`shard_batches`); ``shard=False``: ``data`` is already this rank's own shard.
        transform_fn, max_samples: as in :func:`lowbit.calibrate` (``max_samples`` before sharding).

    Returns the number of samples seen by all ranks together.

    Raises:
        ConfigError: an ``ema`` observer (order-dependent: no sharded equivalent).
        CalibrationError: no data, NaN/Inf, a quantizer some rank never reached.
        DistributedError: the ranks disagree on the model's quantizers or a peer died.
    """
    from ..api import collect_inputs

    qs = _quantizers(model)
    if not qs:
        raise CalibrationError("the model has no static activation quantizers to calibrate; quantize_ it with a config first")
    names = {id(m): n for n, m in model.named_modules()}
    ema = sorted({names[id(q)] for q in qs if q.spec.observer == MovingAverageMinMaxObserver.name})
    if ema:
        raise ConfigError(f"the ema observer depends on batch order and cannot be sharded (quantizers {ema[:3]}); use minmax "
                          "or a histogram observer (percentile, mse, entropy, aciq)")
    agree([(names[id(q)], q.spec.describe()) for q in qs], "activation quantizers")
    # bad data on one rank (NaN, empty) must stop every rank, not leave the others in a collective
    inputs = together(lambda: collect_inputs(data, transform_fn=transform_fn, max_samples=max_samples), "reading the calibration data")
    if shard:
        inputs = shard_batches(inputs)
    was_training = model.training
    model.eval()
    sharers = [m for m in model.modules() if isinstance(m, ActQuant) and m.grid_source is not None and not m.spec.dynamic]
    for q in qs:
        q.start_observing()
    try:
        with collective_guard("sharded calibration"):
            hist = {id(q): q.observer for q in qs if isinstance(q.observer, HistogramObserver)}
            for q in qs:  # pass 1: ranges only
                if id(q) in hist:
                    q.observer = MinMaxObserver(q.observer.granularity)
            together(lambda: _run(model, inputs), "sharded calibration (pass 1: ranges)")
            _check_everyone_observed(qs, names)
            _all_reduce([q.observer for q in qs], {"min_val": dist.ReduceOp.MIN, "max_val": dist.ReduceOp.MAX})
            if hist:  # pass 2: exact histograms on the global ranges
                for q in qs:
                    if id(q) in hist:
                        mm, h = q.observer, hist[id(q)]
                        h.fix_range(mm.min_val, mm.max_val, mm.param_shape)
                        q.observer = h
                        q.state = "observe"
                for q in qs:
                    if id(q) not in hist:
                        q.state = "hold"  # observed already; ActQuant passes any state but observe/quant through
                together(lambda: _run(model, inputs), "sharded calibration (pass 2: histograms)")
                for q in qs:
                    if id(q) not in hist:
                        q.state = "observe"
                _all_reduce(list(hist.values()), {"hist": dist.ReduceOp.SUM})
            total = torch.tensor([sum(int(x.shape[0]) for x in inputs)], dtype=torch.int64)
            if active():
                dist.all_reduce(total, op=dist.ReduceOp.SUM)
        for q in qs:
            q.finish_observing()
        for q in sharers:
            q.finish_observing()
    except BaseException:
        for q in qs:
            q.abort_observing()
        model.train(was_training)
        raise
    model.train(was_training)
    return int(total)

"""Calibration as a context manager.

Inside ``with calibrating(model):`` every activation quantizer of ``model`` observes the
tensors flowing through it (the model computes in float); on exit each one freezes its
``(scale, zero_point)`` from its observer and starts fake-quantizing. An exception inside the
block leaves the quantizers as they were (no half-calibrated state).

Example:
    >>> import torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> model = lowbit.quantize_(FmnistMLP(), lowbit.PTQConfig(), calibrate=False)
    >>> with lowbit.calibrating(model):
    ...     _ = model(torch.randn(8, 1, 28, 28))
    >>> all(q.calibrated for q in lowbit.activation_quantizers(model))
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import CalibrationError


class Calibratable(nn.Module):
    """Protocol for modules that observe during calibration (activation quantizers)."""

    def start_observing(self) -> None:  # pragma: no cover - interface
        raise TypeError

    def finish_observing(self) -> None:  # pragma: no cover - interface
        raise TypeError

    def abort_observing(self) -> None:  # pragma: no cover - interface
        raise TypeError


def calibratables(model: nn.Module) -> list[Calibratable]:
    """All modules of ``model`` that take part in calibration."""
    return [m for m in model.modules() if isinstance(m, Calibratable)]


@contextmanager
def calibrating(model: nn.Module) -> Iterator[nn.Module]:
    """Observe activations inside the block; freeze qparams on a clean exit."""
    mods = calibratables(model)
    if not mods:
        raise CalibrationError("the model has no activation quantizers to calibrate; quantize_ it with a config first")
    was_training = model.training
    model.eval()
    for m in mods:
        m.start_observing()
    try:
        with torch.no_grad():
            yield model
    except BaseException:
        for m in mods:
            m.abort_observing()
        model.train(was_training)
        raise
    unseen = [m for m in mods if not m.has_observed()]
    if unseen and len(unseen) == len(mods):
        for m in mods:
            m.abort_observing()
        model.train(was_training)
        raise CalibrationError("no data went through the model during calibration; feed at least one batch")
    # quantizers that share another's grid copy it, so they finish after every source
    for m in sorted(mods, key=lambda m: getattr(m, "grid_source", None) is not None):
        m.finish_observing()
    model.train(was_training)

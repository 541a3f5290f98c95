"""Observer base class: streams statistics of a tensor, then proposes a clipping range.

An observer is built for one granularity; ``update(x)`` folds a batch into its running
statistics (constant memory), ``compute_range(fmt, mapping)`` returns the clipping range
``(lo, hi)`` in the granularity's param shape, and ``qparams`` turns that into ``(S, Z)``
with :func:`lowbit.quant.choose_qparams`.
"""

from __future__ import annotations

import torch

from ..errors import CalibrationError
from ..quant import IntFormat, PerTensor, choose_qparams
from ..quant.formats import Mapping
from ..quant.granularity import Granularity


class Observer:
    """Base class. Subclasses implement ``_update(xv)`` on the 2-D view and ``compute_range``."""

    name = "base"

    def __init__(self, granularity: Granularity = PerTensor()) -> None:
        self.granularity = granularity
        self.num_batches = 0
        self.param_shape: tuple[int, ...] | None = None

    def update(self, x: torch.Tensor) -> None:
        """Fold ``x`` into the statistics. Raises CalibrationError on NaN/Inf or empty input."""
        x = x.detach()
        if x.numel() == 0:
            raise CalibrationError("observer got an empty tensor; calibration batches must hold data")
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise CalibrationError(
                f"calibration data holds {bad} NaN/Inf values; clean the inputs (or the model produces them)"
            )
        shape = self.granularity.param_shape(x.shape)
        if self.param_shape is not None and shape != self.param_shape:
            raise CalibrationError(f"observer saw param shape {shape}, earlier {self.param_shape}; inputs changed shape")
        self.param_shape = shape
        self._update(self.granularity.view(x.float()))
        self.num_batches += 1

    def _update(self, xv: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement _update")

    def _check_ready(self) -> None:
        if self.num_batches == 0:
            raise CalibrationError(
                f"{type(self).__name__} has seen no data; run calibration batches through the model first"
            )

    def compute_range(self, fmt: IntFormat, mapping: Mapping) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise TypeError(f"{type(self).__name__} must implement compute_range")

    def qparams(self, fmt: IntFormat, mapping: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        """``choose_qparams(*compute_range(fmt, mapping), fmt, mapping)``."""
        lo, hi = self.compute_range(fmt, mapping)
        return choose_qparams(lo, hi, fmt, mapping)

    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.param_shape if self.param_shape is not None else ())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(granularity={self.granularity})"

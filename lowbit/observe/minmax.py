"""Min-max observers.

* :class:`MinMaxObserver` — running ``lo = min_t min(x_t)``, ``hi = max_t max(x_t)``
  (identical to ``torch.ao.quantization.MinMaxObserver`` / ``PerChannelMinMaxObserver``).
* :class:`MovingAverageMinMaxObserver` — ``lo <- lo + c (min(x_t) - lo)`` (same for hi), the
  first batch initialising; less sensitive to a single outlier batch.

Example:
    >>> import torch
    >>> from lowbit.quant import IntFormat, Symmetric
    >>> ob = MinMaxObserver()
    >>> ob.update(torch.tensor([-1.0, 3.0])); ob.update(torch.tensor([5.0]))
    >>> [t.item() for t in ob.compute_range(IntFormat(bits=8), Symmetric())]
    [-1.0, 5.0]
"""

from __future__ import annotations

import torch

from ..quant.granularity import Granularity, PerTensor
from .base import Observer


class MinMaxObserver(Observer):
    """Running per-row minimum and maximum."""

    name = "minmax"

    def __init__(self, granularity: Granularity = PerTensor()) -> None:
        super().__init__(granularity)
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    def _update(self, xv: torch.Tensor) -> None:
        lo, hi = torch.aminmax(xv, dim=1)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)

    def compute_range(self, fmt, mapping):
        self._check_ready()
        return self._shape(self.min_val), self._shape(self.max_val)


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of per-batch min and max with constant ``averaging_constant``."""

    name = "ema"

    def __init__(self, granularity: Granularity = PerTensor(), averaging_constant: float = 0.01) -> None:
        super().__init__(granularity)
        from ..errors import ConfigError

        if not 0 < averaging_constant <= 1:
            raise ConfigError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def _update(self, xv: torch.Tensor) -> None:
        lo, hi = xv.amin(dim=1), xv.amax(dim=1)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)

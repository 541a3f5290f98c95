"""Observers (range estimation for calibration) and the ``calibrating`` context manager."""

from __future__ import annotations

from ..errors import ConfigError
from ..quant.granularity import Granularity, PerTensor
from .base import Observer as Observer
from .calibrate import calibrating as calibrating
from .histogram import (
    ACIQObserver as ACIQObserver,
)
from .histogram import (
    EntropyObserver as EntropyObserver,
)
from .histogram import (
    HistogramObserver as HistogramObserver,
)
from .histogram import (
    MSEObserver as MSEObserver,
)
from .histogram import (
    PercentileObserver as PercentileObserver,
)
from .histogram import (
    aciq_alpha as aciq_alpha,
)
from .minmax import MinMaxObserver as MinMaxObserver
from .minmax import MovingAverageMinMaxObserver as MovingAverageMinMaxObserver

OBSERVERS: dict[str, type[Observer]] = {
    c.name: c
    for c in (MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver, MSEObserver, EntropyObserver, ACIQObserver)
}


def make_observer(name: str, granularity: Granularity = PerTensor(), **kwargs) -> Observer:
    """Build an observer by registry name (``minmax``, ``ema``, ``percentile``, ``mse``, ``entropy``, ``aciq``).

    Example:
        >>> make_observer("percentile", percentile=99.9)
        PercentileObserver(granularity=PerTensor())
    """
    if name not in OBSERVERS:
        raise ConfigError(f"unknown observer {name!r}; known: {sorted(OBSERVERS)}")
    try:
        return OBSERVERS[name](granularity, **kwargs)
    except TypeError as e:
        raise ConfigError(f"bad arguments {kwargs} for observer {name!r}: {e}") from None

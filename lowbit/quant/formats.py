"""Number formats and mappings — the typed axes of a quantization scheme.

``IntFormat(bits, signed, narrow_range)`` gives the integer grid ``[qmin, qmax]``:

=========  ==============  ====================
signed     narrow_range    [qmin, qmax]
=========  ==============  ====================
False      False           [0, 2^b - 1]
False      True            [0, 2^b - 2]
True       False           [-2^(b-1), 2^(b-1) - 1]
True       True            [-2^(b-1) + 1, 2^(b-1) - 1]
=========  ==============  ====================

``Symmetric()`` fixes the zero point (0 for signed grids, the grid's middle for unsigned),
``Affine()`` fits ``[min, max]`` exactly with a zero point.

Example:
    >>> IntFormat(bits=4, signed=True).qmin, IntFormat(bits=4, signed=True).qmax
    (-8, 7)
    >>> IntFormat(bits=8, signed=True, narrow_range=True).qmin
    -127
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class IntFormat:
    """A uniform integer grid of ``bits`` bits (1..16)."""

    bits: int = 8
    signed: bool = True
    narrow_range: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 1 <= self.bits <= 16:
            raise ConfigError(f"bits={self.bits!r} is outside 1..16; pick an integer bit width between 1 and 16")
        if self.narrow_range and self.bits < 2:
            raise ConfigError("narrow_range needs bits >= 2 (a 1-bit narrow grid has a single level)")

    @property
    def qmin(self) -> int:
        if self.signed:
            return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)
        return 0

    @property
    def qmax(self) -> int:
        if self.signed:
            return 2 ** (self.bits - 1) - 1
        return 2**self.bits - 1 - (1 if self.narrow_range else 0)

    @property
    def levels(self) -> int:
        """Number of representable integers ``qmax - qmin + 1``."""
        return self.qmax - self.qmin + 1

    @property
    def storage_dtype(self) -> torch.dtype:
        """Smallest torch integer dtype that holds the grid."""
        if self.bits <= 8:
            return torch.int8 if self.signed else torch.uint8
        if self.bits <= 16 and self.signed:
            return torch.int16
        return torch.int32


@dataclass(frozen=True)
class Symmetric:
    """Range ``[-a, a]`` with ``a = max(|min|, |max|)``; zero point fixed."""

    name = "symmetric"


@dataclass(frozen=True)
class Affine:
    """Range ``[min(min, 0), max(max, 0)]`` mapped exactly with an integer zero point."""

    name = "affine"


Mapping = Symmetric | Affine


def mapping_from_name(name: str) -> Mapping:
    """``"symmetric"`` -> :class:`Symmetric`, ``"affine"``/``"asymmetric"`` -> :class:`Affine`."""
    if name == "symmetric":
        return Symmetric()
    if name in ("affine", "asymmetric"):
        return Affine()
    raise ConfigError(f"unknown mapping {name!r}; use 'symmetric' or 'affine'")

"""Rounding modes for the quantizer ``q = round(r / S) + Z``.

* ``nearest_even`` — round half to even (IEEE default, ``torch.round``); unbiased on ties.
* ``half_away``    — round half away from zero, ``sign(v) * floor(|v| + 1/2)`` (what many DSPs do).
* ``stochastic``   — ``floor(v + u)``, ``u ~ U[0, 1)``: unbiased in expectation, ``E[round(v)] = v``;
  seeded through a ``torch.Generator``.

Example:
    >>> import torch
    >>> v = torch.tensor([0.5, 1.5, -2.5])
    >>> round_values(v, "nearest_even").tolist(), round_values(v, "half_away").tolist()
    ([0.0, 2.0, -2.0], [1.0, 2.0, -3.0])
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

ROUNDING_MODES = ("nearest_even", "half_away", "stochastic")


def check_rounding(mode: str) -> str:
    """Validate a rounding mode name."""
    if mode not in ROUNDING_MODES:
        raise ConfigError(f"unknown rounding {mode!r}; use one of {list(ROUNDING_MODES)}")
    return mode


def round_values(v: torch.Tensor, mode: str = "nearest_even", generator: torch.Generator | None = None) -> torch.Tensor:
    """Round ``v`` to integers (still a float tensor) with the given mode."""
    if mode == "nearest_even":
        return torch.round(v)
    if mode == "half_away":
        return torch.sign(v) * torch.floor(v.abs() + 0.5)
    if mode == "stochastic":
        u = torch.rand(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        return torch.floor(v + u)
    check_rounding(mode)
    raise AssertionError("unreachable")  # pragma: no cover

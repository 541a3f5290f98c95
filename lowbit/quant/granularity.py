"""Granularity: which elements share one ``(scale, zero_point)``.

Every granularity views a tensor as a 2-D matrix ``(rows, cols)`` where each row shares its
quantization parameters; the core math works on that view only.

===================  ==========================  =====================================
granularity          view of x (shape S)          param shape
===================  ==========================  =====================================
PerTensor()          (1, numel)                   ()
PerChannel(axis=a)   (S[a], numel / S[a])         (S[a],)
PerGroup(size=g)     (S[0] * S[1]/g, g*prod S[2:])  (S[0], S[1]/g)
PerToken()           (numel / S[-1], S[-1])       S[:-1]
===================  ==========================  =====================================

``PerToken`` gives every vector along the last axis its own parameters: for a transformer's
``(batch, tokens, features)`` activation, one scale per token (dynamic per-token quantization).
``PerGroup`` splits axis 1 (input channels / in_features) into contiguous groups of ``size``
for every output row, each group covering its kernel window.

Example:
    >>> import torch
    >>> w = torch.randn(8, 16, 3, 3)
    >>> PerGroup(size=4).view(w).shape, PerGroup(size=4).param_shape(w.shape)
    (torch.Size([32, 36]), (8, 4))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""

    name = "per_tensor"

    def view(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, -1)

    def unview(self, y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return y.reshape(shape)

    def param_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return ()

    def check(self, shape: torch.Size) -> None:
        """Per-tensor fits every shape."""


@dataclass(frozen=True)
class PerChannel:
    """One scale per index of ``axis`` (0 = output channels of a weight, 1 = activation channels)."""

    axis: int = 0
    name = "per_channel"

    def _axis(self, ndim: int) -> int:
        a = self.axis if self.axis >= 0 else ndim + self.axis
        if not 0 <= a < ndim:
            raise ConfigError(f"per-channel axis {self.axis} is out of range for a {ndim}-d tensor")
        return a

    def view(self, x: torch.Tensor) -> torch.Tensor:
        a = self._axis(x.ndim)
        return x.movedim(a, 0).reshape(x.shape[a], -1)

    def unview(self, y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        a = self._axis(len(shape))
        moved = (shape[a], *shape[:a], *shape[a + 1 :])
        return y.reshape(moved).movedim(0, a)

    def param_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return (shape[self._axis(len(shape))],)

    def check(self, shape: torch.Size) -> None:
        self._axis(len(shape))


@dataclass(frozen=True)
class PerGroup:
    """Groups of ``size`` contiguous input channels (axis 1) per output row (axis 0)."""

    size: int = 128
    name = "per_group"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"group size must be a positive integer, got {self.size!r}")

    def check(self, shape: torch.Size) -> None:
        if len(shape) < 2:
            raise ConfigError(f"per-group quantization needs a tensor with >= 2 dims, got shape {tuple(shape)}")
        if shape[1] % self.size:
            raise ConfigError(
                f"group_size={self.size} does not divide the {shape[1]} input channels of shape {tuple(shape)}; "
                "choose a divisor, or set group_policy='adjust' (use the largest divisor) or 'ignore' (skip the layer)"
            )

    def view(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x.shape)
        n_groups = x.shape[1] // self.size
        return x.reshape(x.shape[0] * n_groups, -1)

    def unview(self, y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return y.reshape(shape)

    def param_shape(self, shape: torch.Size) -> tuple[int, ...]:
        self.check(shape)
        return (shape[0], shape[1] // self.size)


@dataclass(frozen=True)
class PerToken:
    """One scale per vector along the last axis (per token of a ``(..., features)`` activation).

    Example:
        >>> import torch
        >>> PerToken().param_shape(torch.Size([2, 5, 8]))
        (2, 5)
    """

    name = "per_token"

    def view(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1])

    def unview(self, y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return y.reshape(shape)

    def param_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return tuple(shape[:-1])

    def check(self, shape: torch.Size) -> None:
        if len(shape) < 1:
            raise ConfigError("per-token quantization needs a tensor with >= 1 dim")


Granularity = PerTensor | PerChannel | PerGroup | PerToken


def largest_divisor_at_most(n: int, g: int) -> int:
    """Largest divisor of ``n`` that is ``<= g`` (used by group_policy='adjust')."""
    for d in range(min(n, g), 0, -1):
        if n % d == 0:
            return d
    return 1

"""Bit packing of 1..8-bit integer codes into bytes (little-endian bit stream).

A code ``q`` on the grid ``[qmin, qmax]`` is stored as ``u = q - qmin`` in ``bits`` bits; element
``i`` occupies stream bits ``[i*bits, (i+1)*bits)``, bit ``k`` of the stream being bit ``k % 8``
of byte ``k // 8``. ``n`` codes take ``ceil(n * bits / 8)`` bytes — exactly the theoretical size.

Example:
    >>> import torch
    >>> q = torch.tensor([-2, -1, 0, 1, 1], dtype=torch.int8)
    >>> packed = pack_bits(q, bits=2, qmin=-2)
    >>> packed.numel(), unpack_bits(packed, bits=2, qmin=-2, numel=5).tolist()
    (2, [-2, -1, 0, 1, 1])
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def _check(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"bit packing supports 1..8 bits, got {bits!r}")


def pack_bits(q: torch.Tensor, bits: int, qmin: int) -> torch.Tensor:
    """Pack integer codes (any shape) into a flat ``uint8`` tensor of ``ceil(n*bits/8)`` bytes."""
    _check(bits)
    u = q.reshape(-1).to(torch.int64) - qmin
    if u.numel() and (int(u.min()) < 0 or int(u.max()) >= 2**bits):
        raise ConfigError(f"codes fall outside the {bits}-bit grid starting at {qmin}")
    if bits == 8:
        return u.to(torch.uint8)
    planes = (u[:, None] >> torch.arange(bits)) & 1  # (n, bits), LSB first
    stream = planes.reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    out = (stream.reshape(-1, 8) << torch.arange(8)).sum(1).to(torch.uint8)
    return out


def unpack_bits(packed: torch.Tensor, bits: int, qmin: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``numel`` codes as ``int32`` (reshape to the original shape)."""
    _check(bits)
    need = math.ceil(numel * bits / 8)
    if packed.numel() != need:
        raise ConfigError(f"packed buffer has {packed.numel()} bytes, {numel} codes of {bits} bits need {need}")
    b = packed.reshape(-1).to(torch.int64)
    if bits == 8:
        return (b + qmin).to(torch.int32)
    stream = ((b[:, None] >> torch.arange(8)) & 1).reshape(-1)[: numel * bits]
    u = (stream.reshape(numel, bits) << torch.arange(bits)).sum(1)
    return (u + qmin).to(torch.int32)

"""Uniform affine quantization — the core math (pure tensor functions, no modules).

For a real value ``r``, scale ``S > 0`` and integer zero point ``Z``:

    q  = clamp(round(r / S) + Z, qmin, qmax)        (quantize)
    r' = S * (q - Z)                                (dequantize)
    fake_quantize(r) = dequantize(quantize(r))      (straight-through gradient)

``choose_qparams`` maps an observed range ``[lo, hi]`` to ``(S, Z)``, exactly as
``torch.ao.quantization`` observers do (so the results are bit-identical):

* the range is widened to include 0: ``lo' = min(lo, 0)``, ``hi' = max(hi, 0)``;
* symmetric:  ``S = max(-lo', hi') / ((qmax - qmin) / 2)``, ``Z = 0`` (signed) or
  ``(qmin + qmax + 1) // 2`` (unsigned);
* affine:     ``S = (hi' - lo') / (qmax - qmin)``, ``Z = clamp(qmin - round(lo' / S), qmin, qmax)``;
* ``S`` is at least float32 epsilon, so a constant-zero tensor still gets a valid scale.

Shapes: ``lo, hi, S, Z`` all have the granularity's ``param_shape(x.shape)``; see
:mod:`lowbit.quant.granularity`.

Example:
    >>> import torch
    >>> from lowbit.quant import IntFormat, Affine, PerTensor, choose_qparams, quantize, dequantize
    >>> x = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    >>> fmt = IntFormat(bits=8, signed=False)
    >>> s, z = choose_qparams(x.min(), x.max(), fmt, Affine())
    >>> q = quantize(x, s, z, fmt)
    >>> q.tolist(), int(z)
    ([0, 85, 127, 255], 85)
    >>> (dequantize(q, s, z) - x).abs().max().item() <= s.item() / 2
    True
"""

from __future__ import annotations

import torch

from .formats import Affine, IntFormat, Mapping, Symmetric
from .granularity import Granularity, PerTensor
from .rounding import check_rounding, round_values

_EPS = torch.finfo(torch.float32).eps


def choose_qparams(
    min_val: torch.Tensor, max_val: torch.Tensor, fmt: IntFormat, mapping: Mapping = Affine()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for the range ``[min_val, max_val]`` (see module docstring).

    Returns ``(scale float32, zero_point int32)`` with the shape of ``min_val``.
    """
    min_val = torch.as_tensor(min_val, dtype=torch.float32)
    max_val = torch.as_tensor(max_val, dtype=torch.float32)
    qmin, qmax = fmt.qmin, fmt.qmax
    min_neg = torch.minimum(min_val, torch.zeros_like(min_val))
    max_pos = torch.maximum(max_val, torch.zeros_like(max_val))
    eps = torch.tensor(_EPS, dtype=torch.float32)
    if isinstance(mapping, Symmetric):
        max_pos = torch.maximum(-min_neg, max_pos)
        scale = torch.maximum(max_pos / (float(qmax - qmin) / 2), eps)
        zp_value = 0 if fmt.signed else (qmin + qmax + 1) // 2
        zero_point = torch.full_like(scale, zp_value, dtype=torch.int32)
    elif isinstance(mapping, Affine):
        scale = torch.maximum((max_pos - min_neg) / float(qmax - qmin), eps)
        zero_point = qmin - torch.round(min_neg / scale).to(torch.int32)
        zero_point = torch.clamp(zero_point, qmin, qmax)
    else:
        from ..errors import ConfigError

        raise ConfigError(f"mapping must be Symmetric() or Affine(), got {mapping!r}")
    return scale, zero_point.to(torch.int32)


def _rows(t: torch.Tensor, n_rows: int) -> torch.Tensor:
    return t.reshape(n_rows, 1) if t.numel() == n_rows else t.reshape(-1, 1)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    fmt: IntFormat,
    granularity: Granularity = PerTensor(),
    rounding: str = "nearest_even",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``q = clamp(round(x / S) + Z, qmin, qmax)`` as ``fmt.storage_dtype``."""
    check_rounding(rounding)
    xv = granularity.view(x.float())
    s = _rows(torch.as_tensor(scale, dtype=torch.float32), xv.shape[0])
    z = _rows(torch.as_tensor(zero_point), xv.shape[0]).to(torch.float32)
    q = torch.clamp(round_values(xv / s, rounding, generator) + z, fmt.qmin, fmt.qmax)
    return granularity.unview(q, x.shape).to(fmt.storage_dtype)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    granularity: Granularity = PerTensor(),
) -> torch.Tensor:
    """``r = S * (q - Z)`` as float32."""
    qv = granularity.view(q.to(torch.float32))
    s = _rows(torch.as_tensor(scale, dtype=torch.float32), qv.shape[0])
    z = _rows(torch.as_tensor(zero_point), qv.shape[0]).to(torch.float32)
    return granularity.unview(s * (qv - z), q.shape)


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: dequantize(quantize(x)). Backward: identity inside the grid, 0 where clamped."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, fmt, granularity, rounding, generator):  # type: ignore[override]
        xv = granularity.view(x)
        s = _rows(scale.to(x.dtype), xv.shape[0])
        z = _rows(zero_point, xv.shape[0]).to(x.dtype)
        v = round_values(xv / s, rounding, generator) + z
        inside = (v >= fmt.qmin) & (v <= fmt.qmax)
        out = (torch.clamp(v, fmt.qmin, fmt.qmax) - z) * s
        ctx.save_for_backward(granularity.unview(inside, x.shape))
        return granularity.unview(out, x.shape)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None, None, None


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    fmt: IntFormat,
    granularity: Granularity = PerTensor(),
    rounding: str = "nearest_even",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Quantize-dequantize in float with a straight-through gradient.

    ``y = S * (clamp(round(x/S) + Z, qmin, qmax) - Z)``; ``dy/dx = 1`` where ``x`` maps inside
    ``[qmin, qmax]`` and 0 where it is clamped (the clipped straight-through estimator).

    Example:
        >>> import torch
        >>> from lowbit.quant import IntFormat
        >>> x = torch.tensor([0.04, 0.26, 9.0], requires_grad=True)
        >>> y = fake_quantize(x, torch.tensor(0.1), torch.tensor(0), IntFormat(bits=4, signed=True))
        >>> y.tolist()
        [0.0, 0.30000001192092896, 0.699999988079071]
        >>> y.sum().backward(); x.grad.tolist()
        [1.0, 1.0, 0.0]
    """
    check_rounding(rounding)
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    zero_point = torch.as_tensor(zero_point, device=x.device)
    return _FakeQuantSTE.apply(x, scale, zero_point, fmt, granularity, rounding, generator)


def range_of(x: torch.Tensor, granularity: Granularity = PerTensor()) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(min, max)`` of ``x`` in the granularity's param shape."""
    xv = granularity.view(x.detach().float())
    shape = granularity.param_shape(x.shape)
    return xv.amin(dim=1).reshape(shape), xv.amax(dim=1).reshape(shape)


def choose_qparams_dynamic(
    x: torch.Tensor, fmt: IntFormat, mapping: Mapping = Affine(), granularity: Granularity = PerTensor()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic (per-input) qparams: ``choose_qparams(*range_of(x))``, computed at run time."""
    lo, hi = range_of(x, granularity)
    return choose_qparams(lo, hi, fmt, mapping)

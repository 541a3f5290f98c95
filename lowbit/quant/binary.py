"""Binary and ternary quantization — BNN, BWN / XNOR-Net, TWN, TTQ (pure tensor math, no modules).

For a float weight ``W`` (``g = dL/dy`` is the incoming gradient):

* BNN ``sign_ste``: ``y = sign(x)`` with ``sign(0) = +1``; ``dL/dx = g * 1[|x| <= 1]``.
* BWN / XNOR ``binarize_weight``: ``y = a * sign(W)``, ``a = mean |W|`` per output channel;
  ``dL/dW = g * 1[|W| <= 1]``.
* TWN ``ternarize_weight``: ``y = a * sign(W) * 1[|W| > D]``, ``D = 0.7 * mean |W|``,
  ``a = mean`` of ``|W|`` over ``|W| > D``; ``dL/dW = g``.
* TTQ ``ttq_quantize``: ``y = Wp * 1[W > D] - Wn * 1[W < -D]``, ``D = t * max |W|``;
  ``dL/dW = Wp g | g | Wn g`` on the positive / dead / negative zone, and ``Wp, Wn`` get gradients.

The scales ``a`` and thresholds ``D`` are statistics of ``W``: they are not differentiated
(the straight-through estimators above treat them as constants). TTQ's ``Wp, Wn`` are trained
parameters and get their own gradients (see :func:`ttq_quantize`).

XNOR-Net also binarizes activations: ``sign_ste(x)`` times the activation scale ``K`` of
:func:`xnor_activation_scale`, so that ``conv(x, W) ~= conv(sign(x), sign(W)) * K * a``.

Example:
    >>> import torch
    >>> from lowbit.quant import binarize_weight, ternarize_weight
    >>> w = torch.tensor([[0.5, -1.5, 0.0, 2.0], [-0.25, 0.25, 0.25, -0.25]])
    >>> binarize_weight(w).tolist()                  # a = mean|w| per row = 1.0 and 0.25
    [[1.0, -1.0, 1.0, 1.0], [-0.25, 0.25, 0.25, -0.25]]
    >>> ternarize_weight(w, axis=0).tolist()         # D = 0.7 * (1.0, 0.25), a = mean(1.5, 2.0) and 0.25
    [[0.0, -1.75, 0.0, 1.75], [-0.25, 0.25, 0.25, -0.25]]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError

# Scale used where a formula would give 0 (all-zero channel): keeps every scale positive and
# finite, the same floor ``choose_qparams`` uses.
_EPS = torch.finfo(torch.float32).eps


# --------------------------------------------------------------------------- validation helpers


def _check_float(fn: str, name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ConfigError(f"{fn}: {name} must be a floating-point tensor, got dtype {x.dtype}; convert it with {name}.float()")
    return x


def _check_axis(fn: str, axis: object, ndim: int, allow_none: bool) -> int | None:
    if axis is None and allow_none:
        return None
    allowed = f"an int in {-ndim}..{ndim - 1}" + (" or None (per tensor)" if allow_none else "")
    if isinstance(axis, bool) or not isinstance(axis, int) or ndim == 0 or not -ndim <= axis < ndim:
        raise ConfigError(f"{fn}: axis={axis!r} is invalid for a {ndim}-d tensor; use {allowed}")
    return axis % ndim


def _check_positive(fn: str, name: str, v: object, upper: float | None = None) -> float:
    rng = f"(0, {upper})" if upper is not None else "(0, inf)"
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 and (upper is None or v < upper)
    if not ok:
        raise ConfigError(f"{fn}: {name}={v!r} is outside {rng}; pass a number in {rng}")
    return float(v)


def _per_channel(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """View ``x`` as ``(rows, cols)``: one row per index of ``axis`` (or one row when None)."""
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def _mean_abs(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Per-row ``mean |x|`` accumulated in float64, returned in ``x``'s dtype.

    float64 makes the mean of ``n`` equal magnitudes exactly that magnitude, so quantizing an
    already binary / ternary tensor reproduces its scale bit for bit (float32 sums would not).
    """
    return _per_channel(x.detach().abs(), axis).double().mean(dim=1).to(x.dtype)


def _broadcastable(p: torch.Tensor, ndim: int, axis: int | None) -> torch.Tensor:
    """Reshape a per-channel parameter ``(C,)`` (or a scalar) so it broadcasts along ``axis``."""
    if axis is None:
        return p.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return p.reshape(shape)


class _StraightThrough(torch.autograd.Function):
    """Forward: the precomputed ``y``. Backward: ``dL/dx = g`` (times ``mask`` where given).

    ``y`` is computed by the caller without autograd so its values are exactly the level set
    (the ``x + (y - x).detach()`` trick would add float rounding to the forward values).
    """

    @staticmethod
    def forward(ctx, x, y, mask):  # type: ignore[override]
        ctx.save_for_backward(mask)
        ctx.has_mask = mask is not None
        return y.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return (grad * mask if ctx.has_mask else grad), None, None


def _straight_through(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return _StraightThrough.apply(x, y.to(x.dtype), None if mask is None else mask.to(x.dtype))


# --------------------------------------------------------------------------- BNN


def _sign(x: torch.Tensor) -> torch.Tensor:
    # torch.sign(0) = 0, but a binary code has no zero: BNN maps 0 to +1.
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Binarize to ``{-1, +1}`` with the BNN straight-through estimator (Hubara et al. 2016).

    Forward ``y = +1 if x >= 0 else -1`` (``sign(0) = +1``, so only two values ever appear).
    Backward ``dL/dx = dL/dy * 1[|x| <= 1]``: the gradient of ``hardtanh(x)``, i.e. identity
    inside ``[-1, 1]`` and cancelled where the input is saturated. Used for both binary
    weights and binary activations.

    Args:
        x: floating-point tensor of any shape.

    Returns:
        A tensor of ``x``'s shape and dtype holding exactly ``-1.0`` and ``+1.0``.

    Example:
        >>> import torch
        >>> x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0], requires_grad=True)
        >>> y = sign_ste(x); y.tolist()
        [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
        >>> y.sum().backward(); x.grad.tolist()
        [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    """
    _check_float("sign_ste", "x", x)
    xd = x.detach()
    return _straight_through(x, _sign(xd), xd.abs() <= 1)


def xnor_activation_scale(
    x: torch.Tensor, kernel_size: int | tuple[int, int] = 1, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0
) -> torch.Tensor:
    """XNOR-Net activation scale ``K = A * k`` (Rastegari et al. 2016, Sec. 3.2).

    For a 4-d input ``(N, C, H, W)``: ``A = mean_c |x|`` (shape ``(N, 1, H, W)``), convolved with
    the box filter ``k = 1 / (kh * kw)`` of the following convolution's window, stride and
    zero padding; ``K`` has shape ``(N, 1, H', W')`` and multiplies the binary convolution
    output ``conv(sign(x), sign(W)) * a``. For a 2-d input ``(N, F)`` (a linear layer)
    ``K = mean_f |x|`` with shape ``(N, 1)``. ``K`` is differentiable (plain autograd);
    detach it to treat it as a constant.

    Args:
        x: activations, ``(N, C, H, W)`` or ``(N, F)``.
        kernel_size, stride, padding: those of the convolution that consumes ``sign(x)``
            (ignored for 2-d inputs).

    Example:
        >>> import torch
        >>> x = torch.tensor([[[[1.0, -3.0], [2.0, 0.0]]]])        # N=C=1, 2x2
        >>> xnor_activation_scale(x, kernel_size=2).tolist()        # (1 + 3 + 2 + 0) / 4
        [[[[1.5]]]]
        >>> xnor_activation_scale(torch.tensor([[1.0, -2.0, 3.0, 0.0]])).tolist()
        [[1.5]]
    """
    _check_float("xnor_activation_scale", "x", x)
    if x.ndim == 2:
        return x.abs().mean(dim=1, keepdim=True)
    if x.ndim != 4:
        raise ConfigError(f"xnor_activation_scale: x must be (N, C, H, W) or (N, F), got shape {tuple(x.shape)}")
    a = x.abs().mean(dim=1, keepdim=True)
    # count_include_pad=True: zero padding counts in the 1/(kh*kw) average, exactly A conv k.
    return F.avg_pool2d(a, kernel_size, stride, padding, count_include_pad=True)


# --------------------------------------------------------------------------- BWN / XNOR weights


def binary_scale(w: torch.Tensor, axis: int | None = 0) -> torch.Tensor:
    """BWN / XNOR-Net weight scale ``a = mean |W|`` (the L2-optimal scale for ``a * sign(W)``).

    Reduced over every dimension except ``axis`` (output channels by default); ``axis=None``
    gives one scale for the whole tensor. An all-zero channel gets ``a = 0`` (its binarized
    output is 0 either way). The mean is accumulated in float64 and cast back, so the scale of
    an already binarized tensor is reproduced exactly (binarizing twice changes nothing).

    Returns:
        ``(w.shape[axis],)`` float tensor, or a 0-d tensor when ``axis`` is None.

    Example:
        >>> import torch
        >>> binary_scale(torch.tensor([[1.0, -3.0], [0.5, 0.5]])).tolist()
        [2.0, 0.5]
    """
    _check_float("binary_scale", "w", w)
    ax = _check_axis("binary_scale", axis, w.ndim, allow_none=True)
    a = _mean_abs(w, ax)
    return a.reshape(()) if ax is None else a


def binarize_weight(w: torch.Tensor, axis: int | None = 0) -> torch.Tensor:
    """BWN / XNOR-Net binary weight ``y = a * sign(W)``, ``a = mean |W|`` per channel.

    ``sign(0) = +1``, so every channel holds exactly the two values ``{-a, +a}``
    (:func:`binary_scale` returns ``a``). Quantizing twice changes nothing.

    Gradient: the clipped straight-through estimator ``dL/dW = dL/dy * 1[|W| <= 1]``, with
    ``a`` treated as a constant. Rastegari et al. (Sec. 3.1) derive
    ``dL/dW = dL/dy * (1/n + a * 1[|W| <= 1])``; we drop the ``1/n`` term and the factor ``a``
    so the weight gradient keeps the float model's magnitude (the same learning rate works),
    which is what BNN / BWN training code commonly does in practice.

    Args:
        w: float weight, e.g. ``(out, in)`` or ``(out, in, kh, kw)``.
        axis: the channel axis that gets its own ``a`` (0 = output channels); None = per tensor.

    Example:
        >>> import torch
        >>> w = torch.tensor([[0.5, -1.5], [0.0, -0.2]], requires_grad=True)
        >>> y = binarize_weight(w); y.tolist()
        [[1.0, -1.0], [0.10000000149011612, -0.10000000149011612]]
        >>> y.sum().backward(); w.grad.tolist()
        [[1.0, 0.0], [1.0, 1.0]]
    """
    _check_float("binarize_weight", "w", w)
    ax = _check_axis("binarize_weight", axis, w.ndim, allow_none=True)
    wd = w.detach()
    a = _broadcastable(binary_scale(wd, ax), w.ndim, ax)
    return _straight_through(w, a * _sign(wd), wd.abs() <= 1)


# --------------------------------------------------------------------------- TWN


def twn_threshold(w: torch.Tensor, axis: int | None = None, factor: float = 0.7) -> torch.Tensor:
    """TWN threshold ``D = factor * mean |W|`` (Li et al. 2016; 0.7 approximates the optimum).

    Per tensor by default, as in the TWN paper; per channel along ``axis`` when given.

    Returns:
        0-d tensor (``axis=None``) or ``(w.shape[axis],)``.

    Example:
        >>> import torch
        >>> twn_threshold(torch.tensor([1.0, -2.0, 3.0, 0.0])).item()     # 0.7 * 1.5
        1.0499999523162842
    """
    _check_float("twn_threshold", "w", w)
    ax = _check_axis("twn_threshold", axis, w.ndim, allow_none=True)
    f = _check_positive("twn_threshold", "factor", factor)
    d = (f * _mean_abs(w, ax).double()).to(w.dtype)
    return d.reshape(()) if ax is None else d


def _delta(fn: str, w: torch.Tensor, delta: object, ax: int | None) -> torch.Tensor:
    """Validated threshold as a ``(rows, 1)`` column matching ``_per_channel(w, ax)``."""
    rows = 1 if ax is None else w.shape[ax]
    if delta is None:
        d = twn_threshold(w, ax)
    elif isinstance(delta, (int, float)) and not isinstance(delta, bool):
        d = torch.tensor(float(delta), dtype=w.dtype, device=w.device)
    elif isinstance(delta, torch.Tensor) and delta.is_floating_point():
        d = delta.detach().to(w.device, w.dtype)
    else:
        raise ConfigError(f"{fn}: delta must be None, a number or a float tensor, got {type(delta).__name__}")
    if d.numel() not in (1, rows):
        raise ConfigError(f"{fn}: delta has {d.numel()} elements; use a scalar or one per channel ({rows} along axis={ax})")
    if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
        raise ConfigError(f"{fn}: delta must be finite and >= 0, got {d.tolist()}")
    return d.reshape(-1, 1).expand(rows, 1)


def ternary_scale(w: torch.Tensor, delta: float | torch.Tensor | None = None, axis: int | None = None) -> torch.Tensor:
    """TWN scale ``a = mean_{|W| > D} |W|`` — the L2-optimal scale for the ternary code at ``D``.

    Where no weight of a channel exceeds ``D`` the code is all zeros and no scale is defined;
    ``a = 0`` would make the scale unusable as a divisor (packing, integer export), so we set
    ``a = max(D, eps)`` there instead: positive and finite, and the dequantized values (all 0)
    do not depend on it.

    Args:
        w: float weight.
        delta: threshold ``D`` (scalar or one per channel); default :func:`twn_threshold`.
        axis: per-channel axis for both ``D`` and ``a``; None = per tensor.

    Example:
        >>> import torch
        >>> ternary_scale(torch.tensor([0.1, -1.0, 2.0, 0.0])).item()   # D = 0.7 * 0.775: mean(1, 2)
        1.5
    """
    _check_float("ternary_scale", "w", w)
    ax = _check_axis("ternary_scale", axis, w.ndim, allow_none=True)
    wd = _per_channel(w.detach().abs(), ax)
    d = _delta("ternary_scale", w, delta, ax)
    above = wd > d
    count = above.sum(dim=1)
    total = (wd.double() * above).sum(dim=1)  # float64: see _mean_abs
    fallback = d[:, 0].clamp_min(_EPS)
    a = torch.where(count > 0, (total / count.clamp_min(1)).to(w.dtype), fallback)
    return a.reshape(()) if ax is None else a


def ternarize_weight(w: torch.Tensor, delta: float | torch.Tensor | None = None, axis: int | None = None) -> torch.Tensor:
    """TWN ternary weight ``y = a * t``, ``t = sign(W) * 1[|W| > D]`` in ``{-1, 0, +1}``.

    ``D`` defaults to :func:`twn_threshold` (``0.7 * mean |W|``) and ``a`` is
    :func:`ternary_scale` (``mean`` of ``|W|`` over ``|W| > D``), both per tensor unless ``axis``
    is given. Every channel holds only ``{-a, 0, +a}``. With the default threshold quantizing
    twice changes nothing (``0.7 * mean |y| < a``, so the nonzero codes survive and ``a`` is kept).

    Gradient: the plain straight-through estimator ``dL/dW = dL/dy`` (TWN trains the float
    weights with the ternary weights' gradient); ``D`` and ``a`` are treated as constants.

    Example:
        >>> import torch
        >>> w = torch.tensor([0.1, -1.0, 2.0, 0.0], requires_grad=True)
        >>> y = ternarize_weight(w); y.tolist()
        [0.0, -1.5, 1.5, 0.0]
        >>> y.sum().backward(); w.grad.tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    _check_float("ternarize_weight", "w", w)
    ax = _check_axis("ternarize_weight", axis, w.ndim, allow_none=True)
    wd = w.detach()
    d = _delta("ternarize_weight", wd, delta, ax)
    a = ternary_scale(wd, d[:, 0], ax)
    d_b = _broadcastable(d[:, 0] if ax is not None else d[0, 0], w.ndim, ax)
    # where(), not sign * mask: a masked negative weight would give -0.0
    t = torch.where(wd.abs() > d_b, torch.sign(wd), torch.zeros((), dtype=wd.dtype, device=wd.device))
    return _straight_through(w, _broadcastable(a, w.ndim, ax) * t)


# --------------------------------------------------------------------------- TTQ


class _TTQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, wp, wn, delta):  # type: ignore[override]
        pos = w > delta
        neg = w < -delta
        ctx.save_for_backward(pos, neg, wp, wn)
        zero = torch.zeros((), dtype=w.dtype, device=w.device)
        return torch.where(pos, wp.reshape(()), zero) - torch.where(neg, wn.reshape(()), zero)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        pos, neg, wp, wn = ctx.saved_tensors
        # dL/dw: wp * g on I_p, wn * g on I_n, g in the dead zone (Zhu et al. 2017, Eq. 8).
        scale = torch.where(pos, wp.reshape(()), torch.where(neg, wn.reshape(()), torch.ones_like(wp.reshape(()))))
        gw = g * scale if ctx.needs_input_grad[0] else None
        # y = wp * 1[I_p] - wn * 1[I_n]: dy/dwp = +1 on I_p, dy/dwn = -1 on I_n.
        gwp = (g * pos).sum().reshape(wp.shape) if ctx.needs_input_grad[1] else None
        gwn = -(g * neg).sum().reshape(wn.shape) if ctx.needs_input_grad[2] else None
        return gw, gwp, gwn, None


def _ttq_scale(name: str, v: object, w: torch.Tensor) -> torch.Tensor:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = torch.tensor(float(v), dtype=w.dtype, device=w.device)
    if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.numel() != 1:
        raise ConfigError(f"ttq_quantize: {name} must be a positive float scalar (number or 1-element float tensor), got {v!r}")
    value = float(v.detach())
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"ttq_quantize: {name}={value} is outside (0, inf); TTQ scales are positive magnitudes")
    return v


def ttq_quantize(w: torch.Tensor, wp: float | torch.Tensor, wn: float | torch.Tensor, t: float = 0.05) -> torch.Tensor:
    """Trained Ternary Quantization (Zhu et al. 2017): ``y = Wp * 1[W > D] - Wn * 1[W < -D]``.

    ``D = t * max |W|`` per tensor (the paper's and its reference code's choice, ``t = 0.05``);
    ``Wp, Wn > 0`` are the trained positive and negative magnitudes, one pair per layer
    (0-d / 1-element tensors, or numbers when they are not trained). ``|W| = D`` maps to 0.

    Gradients (with ``g = dL/dy``, ``I_p = {W > D}``, ``I_n = {W < -D}``)::

        dL/dWp = sum_{I_p} g
        dL/dWn = -sum_{I_n} g          (Wn is a magnitude: y = -Wn on I_n)
        dL/dW  = Wp * g on I_p,  g on |W| <= D,  Wn * g on I_n

    The paper's Eq. 7 prints ``dL/dWn`` without the minus sign; the minus is the chain rule
    for ``y = -Wn`` and what its TensorFlow reference code computes. ``D`` is a constant.

    Args:
        w: float latent weight.
        wp, wn: positive scales (trained parameters; their gradients have their shape).
        t: threshold factor in ``(0, 1)``.

    Example:
        >>> import torch
        >>> w = torch.tensor([-1.0, -0.04, 0.02, 0.5], requires_grad=True)
        >>> wp = torch.tensor(2.0, requires_grad=True); wn = torch.tensor(3.0, requires_grad=True)
        >>> y = ttq_quantize(w, wp, wn); y.tolist()                 # D = 0.05 * 1.0
        [-3.0, 0.0, 0.0, 2.0]
        >>> y.sum().backward(); w.grad.tolist(), wp.grad.item(), wn.grad.item()
        ([3.0, 1.0, 1.0, 2.0], 1.0, -1.0)
    """
    _check_float("ttq_quantize", "w", w)
    t = _check_positive("ttq_quantize", "t", t, upper=1.0)
    wp_t = _ttq_scale("wp", wp, w)
    wn_t = _ttq_scale("wn", wn, w)
    delta = t * w.detach().abs().max() if w.numel() else torch.zeros((), dtype=w.dtype, device=w.device)
    return _TTQ.apply(w, wp_t.to(w.dtype), wn_t.to(w.dtype), delta)

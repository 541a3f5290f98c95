"""Non-uniform weight quantization — power-of-two, ShiftCNN, k-means codebooks (pure tensor math).

* **Power-of-two (log) levels** (Miyashita et al. 2016; the multiply becomes a bit shift):
  1 sign bit and ``bits - 1`` exponent bits give the ``2**bits - 1`` levels

      ``L_bits = {0} U {+-2**-k : k = 0 .. 2**(bits-1) - 2}``      (``pot_levels``)

  e.g. ``bits=2 -> {0, +-1}``, ``bits=4 -> {0, +-2**0, ..., +-2**-6}`` (15 levels). A weight is
  ``scale * l`` with ``l`` the level nearest to ``w / scale`` in the **linear** domain
  (minimum ``|w - q|``, hence minimum MSE; ties go to the smaller magnitude). Log-domain
  rounding (``round(log2 |w|)``) would move the decision point between ``2**-k`` and
  ``2**-(k+1)`` from ``0.75 * 2**-k`` to ``0.707 * 2**-k`` and cost MSE.
* **ShiftCNN** (Gudovskiy & Rigazio 2017): each weight is a sum of ``N`` codewords of the same
  set ``C = L_bits`` (``B`` bits per codeword), picked greedily on the normalized weight
  ``x = w / max|w|``: ``c_1 = nearest(x)``, ``c_2 = nearest(x - c_1)``, ... Because ``0 in C``
  each term can only shrink the error, so the error is non-increasing in ``N`` element-wise.
* **k-means codebook** (Han et al. 2016, Deep Compression): ``2**bits`` centroids per tensor,
  linearly initialised between ``min(w)`` and ``max(w)``, refined by Lloyd's iteration.

Every quantizer returns dequantized float values with a straight-through gradient (see each
function for the exact rule).

Example:
    >>> import torch
    >>> from lowbit.quant import pot_quantize, shiftcnn_quantize
    >>> w = torch.tensor([0.9, -0.3, 0.05, 0.0])
    >>> pot_quantize(w, bits=3).tolist()       # scale = 1 (0.9 rounded up to 2**0); levels {0, +-1, +-1/2, +-1/4}
    [1.0, -0.25, 0.0, 0.0]
    >>> shiftcnn_quantize(w, n_terms=2, bits=4, scale=1.0).tolist()   # 1 - 1/8, -1/4 - 1/16, 1/16 - 1/64
    [0.875, -0.3125, 0.046875, 0.0]
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .binary import _check_float, _straight_through

POT_BITS = range(2, 9)  # 2**-(2**7 - 2) = 2**-126 is float32's smallest normal number
KMEANS_BITS = range(1, 9)
SHIFTCNN_MAX_TERMS = 8


# --------------------------------------------------------------------------- helpers


def _check_int(fn: str, name: str, v: object, allowed: range) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v not in allowed:
        raise ConfigError(f"{fn} supports {name} in {allowed.start}..{allowed.stop - 1}, got {v!r}")
    return v


def _compute_dtype(w: torch.Tensor) -> torch.dtype:
    # float16 / bfloat16 cannot hold the small levels or accumulate the means: work in float32.
    return w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32


def _scale(fn: str, scale: object, w: torch.Tensor) -> torch.Tensor:
    """A given scale, validated: positive, finite, broadcastable to ``w``; in ``w``'s dtype."""
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        s = torch.tensor(float(scale), dtype=w.dtype, device=w.device)
    elif isinstance(scale, torch.Tensor) and scale.is_floating_point():
        s = scale.detach().to(w.device, w.dtype)
    else:
        raise ConfigError(f"{fn}: scale must be None, a positive number or a float tensor, got {type(scale).__name__}")
    try:
        torch.broadcast_shapes(s.shape, w.shape)
    except RuntimeError:
        raise ConfigError(f"{fn}: scale of shape {tuple(s.shape)} does not broadcast to w of shape {tuple(w.shape)}") from None
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ConfigError(f"{fn}: scale must be finite and > 0, got {s.tolist()}")
    return s


def _pot_magnitudes(bits: int, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.Tensor:
    """``[0, 2**-kmax, ..., 2**-1, 1]`` ascending, ``kmax = 2**(bits-1) - 2``."""
    kmax = 2 ** (bits - 1) - 2
    exps = torch.arange(-kmax, 1, dtype=dtype, device=device)
    return torch.cat([torch.zeros(1, dtype=dtype, device=device), torch.exp2(exps)])


def _nearest_sorted(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of the ascending ``levels``; a tie goes to the lower entry."""
    mid = (levels[:-1] + levels[1:]) / 2
    # right=False: x == mid[i] -> i, the lower neighbour.
    return torch.searchsorted(mid.contiguous(), x.contiguous(), right=False)


def _pot_codes(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Index into ``pot_levels(bits)`` of the level nearest to ``x`` (|x| <= 1), ties toward 0."""
    mags = _pot_magnitudes(bits, x.dtype, x.device)
    m = _nearest_sorted(x.abs(), mags)  # symmetric rule: tie -> smaller magnitude for both signs
    zero = mags.numel() - 1  # position of 0 in the full ascending level set
    return torch.where(x < 0, zero - m, zero + m)


# --------------------------------------------------------------------------- power of two


def pot_levels(bits: int) -> torch.Tensor:
    """The ``2**bits - 1`` power-of-two levels at unit scale, ascending (float32).

    ``{0} U {+-2**-k : k = 0 .. 2**(bits-1) - 2}``: one sign bit, ``bits - 1`` bits of exponent
    (one of their ``2**(bits-1)`` codes is 0). Also the ShiftCNN codebook of ``bits`` bits.

    Example:
        >>> pot_levels(3).tolist()
        [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
        >>> pot_levels(4).numel(), pot_levels(4).max().item(), pot_levels(4)[8].item()  # 2**-6
        (15, 1.0, 0.015625)
    """
    _check_int("pot_levels", "bits", bits, POT_BITS)
    mags = _pot_magnitudes(bits, torch.float32)
    return torch.cat([-mags[1:].flip(0), mags])


def pot_scale(w: torch.Tensor) -> torch.Tensor:
    """Default power-of-two scale: ``max |w|`` rounded **up** to a power of two (1 for all zeros).

    Rounding up makes the largest level ``scale >= max |w|``, so no weight is clipped, and a
    power-of-two scale keeps every level ``scale * 2**-k`` an exact power of two — the
    quantized layer multiplies by shifts only. (Rounding to the nearest power of two could
    clip the largest weights by up to 25%.)

    Example:
        >>> import torch
        >>> pot_scale(torch.tensor([0.3, -0.2])).item(), pot_scale(torch.tensor([0.25])).item()
        (0.5, 0.25)
    """
    _check_float("pot_scale", "w", w)
    amax = w.detach().abs().amax().to(_compute_dtype(w)) if w.numel() else torch.zeros((), dtype=_compute_dtype(w), device=w.device)
    mant, exp = torch.frexp(amax)  # amax = mant * 2**exp, mant in [0.5, 1) (exact)
    up = torch.ldexp(torch.ones_like(amax), exp)
    return torch.where(mant == 0.5, amax, up)  # already a power of two: keep it; 0 -> 2**0


def pot_quantize(w: torch.Tensor, bits: int, scale: float | torch.Tensor | None = None) -> torch.Tensor:
    """Power-of-two (log) quantization: ``q = scale * nearest(w / scale)`` over ``pot_levels(bits)``.

    Nearest is in the linear domain (minimum ``|w - q|``); a tie goes to the smaller magnitude,
    for either sign. ``w / scale`` is clipped to ``[-1, 1]`` first. ``scale`` defaults to
    :func:`pot_scale` (``max |w|`` rounded up to a power of two); a given scale is a positive
    number or a tensor broadcastable to ``w`` (e.g. ``(C, 1, 1, 1)`` per output channel).
    With the default scale quantizing twice changes nothing.

    Gradient: straight-through inside the range, ``dL/dw = dL/dq * 1[|w| <= scale]``.

    Args:
        w: float tensor.
        bits: total bits including the sign, 2..8 (``2**bits - 1`` levels).
        scale: the value of the largest level.

    Example:
        >>> import torch
        >>> w = torch.tensor([0.8, 0.74, -0.3, 0.01, 3.0], requires_grad=True)
        >>> q = pot_quantize(w, bits=3, scale=1.0); q.tolist()   # 0.75 is the 0.5 | 1 decision point
        [1.0, 0.5, -0.25, 0.0, 1.0]
        >>> q.sum().backward(); w.grad.tolist()                   # 3.0 was clipped
        [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    _check_float("pot_quantize", "w", w)
    _check_int("pot_quantize", "bits", bits, POT_BITS)
    wd = w.detach().to(_compute_dtype(w))
    s = pot_scale(wd) if scale is None else _scale("pot_quantize", scale, wd)
    x = wd / s
    levels = pot_levels(bits).to(wd.device, wd.dtype)
    q = s * levels[_pot_codes(x.clamp(-1, 1), bits)]
    return _straight_through(w, q, x.abs() <= 1)


# --------------------------------------------------------------------------- ShiftCNN


def shiftcnn_codes(w: torch.Tensor, n_terms: int, bits: int, scale: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ShiftCNN codes: ``N`` greedy indices into ``pot_levels(bits)`` per weight, and the scale.

    With ``x = clip(w / scale, -1, 1)``, ``r_0 = x``: ``c_n = nearest(r_{n-1})`` over
    ``C = pot_levels(bits)`` (linear domain, ties to the smaller magnitude) and
    ``r_n = r_{n-1} - c_n``. ``scale`` defaults to ``max |w|`` (1 for an all-zero tensor).
    The weights are reproduced exactly by::

        scale * pot_levels(bits)[codes].sum(dim=-1)        # == shiftcnn_quantize(w, N, B)

    Returns:
        ``(codes, scale)``: ``codes`` int64 of shape ``(*w.shape, n_terms)`` with values in
        ``0 .. 2**bits - 2`` (``2**(bits-1) - 1`` is the zero codeword, so each code fits in
        ``bits`` bits); ``scale`` as a tensor (0-d by default).

    Example:
        >>> import torch
        >>> codes, s = shiftcnn_codes(torch.tensor([0.8, -1.0]), n_terms=2, bits=3)
        >>> codes.tolist(), pot_levels(3)[codes].tolist(), s.item()
        ([[6, 2], [0, 3]], [[1.0, -0.25], [-1.0, 0.0]], 1.0)
    """
    _check_float("shiftcnn_codes", "w", w)
    _check_int("shiftcnn_codes", "n_terms", n_terms, range(1, SHIFTCNN_MAX_TERMS + 1))
    _check_int("shiftcnn_codes", "bits", bits, POT_BITS)
    wd = w.detach().to(_compute_dtype(w))
    if scale is None:
        amax = wd.abs().amax() if wd.numel() else torch.zeros((), dtype=wd.dtype, device=wd.device)
        s = torch.where(amax > 0, amax, torch.ones_like(amax))
    else:
        s = _scale("shiftcnn_codes", scale, wd)
    levels = pot_levels(bits).to(wd.device, wd.dtype)
    r = (wd / s).clamp(-1, 1)
    codes = []
    for _ in range(n_terms):
        c = _pot_codes(r, bits)
        codes.append(c)
        r = r - levels[c]  # exact: the nearest power of two is within a factor 2 of r (Sterbenz)
    return torch.stack(codes, dim=-1), s


def shiftcnn_quantize(w: torch.Tensor, n_terms: int, bits: int, scale: float | torch.Tensor | None = None) -> torch.Tensor:
    """ShiftCNN quantization: each weight becomes a sum of ``n_terms`` values ``+-scale * 2**-m`` (or 0).

    ``q = scale * sum_n c_n`` with the greedy codes of :func:`shiftcnn_codes` (recipe
    ``shiftcnn-n2b4`` = ``n_terms=2, bits=4``: 15 codewords ``{0, +-2**0 .. +-2**-6}`` per term).
    The error ``|w - q|`` is non-increasing in ``n_terms`` for every element, and
    ``n_terms=1`` equals :func:`pot_quantize` at the same scale.

    Gradient: ``dL/dw = dL/dq * 1[|w| <= scale]`` (straight-through; only a given ``scale`` clips).

    Example:
        >>> import torch
        >>> w = torch.tensor([0.3, -0.7, 1.0], requires_grad=True)
        >>> q = shiftcnn_quantize(w, n_terms=2, bits=4); q.tolist()    # scale = max|w| = 1
        [0.3125, -0.75, 1.0]
        >>> q.sum().backward(); w.grad.tolist()
        [1.0, 1.0, 1.0]
    """
    codes, s = shiftcnn_codes(w, n_terms, bits, scale)
    wd = w.detach().to(s.dtype)
    q = s * pot_levels(bits).to(wd.device, wd.dtype)[codes].sum(dim=-1)
    return _straight_through(w, q, wd.abs() <= s)


# --------------------------------------------------------------------------- k-means codebooks


def _nearest_in_codebook(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index into ``codebook`` (any order) of the nearest entry; ties go to the smaller value."""
    vals, perm = torch.sort(codebook, stable=True)
    return perm[_nearest_sorted(x, vals)]


def _check_codebook(fn: str, codebook: object, k: int | None = None) -> torch.Tensor:
    if not isinstance(codebook, torch.Tensor) or not codebook.is_floating_point() or codebook.ndim != 1 or codebook.numel() == 0:
        raise ConfigError(f"{fn}: codebook must be a non-empty 1-d float tensor, got {codebook!r:.80}")
    if k is not None and codebook.numel() != k:
        raise ConfigError(f"{fn}: init has {codebook.numel()} centroids; 2**bits = {k} are needed")
    if not bool(torch.isfinite(codebook).all()):
        raise ConfigError(f"{fn}: codebook has non-finite entries: {codebook.tolist()}")
    return codebook.detach()


def kmeans_codebook(w: torch.Tensor, bits: int, iters: int = 30, init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """1-d k-means codebook of ``K = 2**bits`` centroids for one tensor (Han et al., Deep Compression).

    Lloyd's iteration from the linear initialisation ``c_k = min(w) + k (max(w) - min(w)) / (K-1)``
    (Han et al. found it beats random and density-based starts because it keeps the few large
    weights represented): assign every weight to its nearest centroid (ties to the smaller),
    move each centroid to the mean of its weights (accumulated in float64); an empty cluster
    keeps its old centroid. Stops after ``iters`` rounds or as soon as the codebook no longer
    changes — it is then an exact fixed point. The MSE never increases from the linear
    (uniform-grid) start. Deterministic on CPU.

    Args:
        w: float tensor (one codebook for all of it).
        bits: 1..8 (2 .. 256 centroids).
        iters: maximum number of Lloyd rounds, >= 1.
        init: optional starting codebook of ``K`` entries (e.g. to refine a fine-tuned one).

    Returns:
        ``(codebook, indices)``: ``codebook`` ascending, shape ``(K,)``, float32 (float64 for
        float64 input); ``indices`` int64 of ``w.shape`` with
        ``codebook[indices] == codebook_quantize(w, codebook)``.

    Example:
        >>> import torch
        >>> cb, idx = kmeans_codebook(torch.tensor([0.0, 0.1, 0.2, 1.0, 1.1, 3.0]), bits=1)
        >>> [round(c, 4) for c in cb.tolist()], idx.tolist()   # init (0, 3); 0.48 = mean of the first five
        ([0.48, 3.0], [0, 0, 0, 0, 0, 1])
    """
    _check_float("kmeans_codebook", "w", w)
    _check_int("kmeans_codebook", "bits", bits, KMEANS_BITS)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"kmeans_codebook: iters must be an int >= 1, got {iters!r}")
    if w.numel() == 0:
        raise ConfigError("kmeans_codebook: w is empty; there is nothing to cluster")
    k = 2**bits
    x = w.detach().reshape(-1)
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("kmeans_codebook: w has NaN or inf entries; k-means needs finite weights")
    if init is None:
        lo, hi = x.min().double(), x.max().double()
        start = (lo + torch.linspace(0, 1, k, dtype=torch.float64, device=x.device) * (hi - lo))
    else:
        start = _check_codebook("kmeans_codebook", init, k)
    cb, idx = lloyd_1d(x, start, iters)
    return cb, idx.reshape(w.shape)


def lloyd_1d(x: torch.Tensor, init: torch.Tensor, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on the values of ``x`` from the centroids ``init`` (any count ``K >= 1``): assign
    each value to its nearest centroid (ties to the smaller), move each centroid to the mean of its values
    (float64 sums); an empty cluster keeps its centroid. At most ``iters`` rounds, stopping at a fixed point.

    Returns ``(codebook ascending (K,), indices int64 of x.shape)``; the codebook has ``x``'s compute dtype
    (float32, or float64 for float64 input).

    Example:
        >>> import torch
        >>> cb, idx = lloyd_1d(torch.tensor([1.0, 1.2, 5.0, 5.4, 9.0]), torch.tensor([0.0, 4.0, 8.0]))
        >>> [round(c, 3) for c in cb.tolist()], idx.tolist()
        ([1.1, 5.2, 9.0], [0, 0, 1, 1, 2])
    """
    dtype = _compute_dtype(x)
    flat = x.detach().reshape(-1).to(dtype)
    cb = torch.sort(init.detach().to(flat.device, dtype).reshape(-1)).values
    k = cb.numel()
    xd = flat.double()
    for _ in range(iters):
        idx = _nearest_sorted(flat, cb)
        sums = torch.zeros(k, dtype=torch.float64, device=flat.device).index_add_(0, idx, xd)
        counts = torch.bincount(idx, minlength=k)
        new = torch.where(counts > 0, (sums / counts.clamp_min(1)).to(dtype), cb)
        # 1-d Lloyd keeps the centroids ordered; sorting only guards float ties.
        new = torch.sort(new).values
        if torch.equal(new, cb):
            break
        cb = new
    return cb, _nearest_sorted(flat, cb).reshape(x.shape)


def codebook_indices(w: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index (int64, ``w.shape``) of the nearest codebook entry for each weight; ties to the smaller value.

    Example:
        >>> import torch
        >>> codebook_indices(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([1.0, 0.0])).tolist()
        [1, 1, 0]
    """
    _check_float("codebook_indices", "w", w)
    cb = _check_codebook("codebook_indices", codebook)
    dtype = torch.promote_types(_compute_dtype(w), cb.dtype)
    return _nearest_in_codebook(w.detach().to(dtype), cb.to(w.device, dtype))


class _CodebookSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, codebook, idx):  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.k, ctx.cb_dtype = codebook.numel(), codebook.dtype
        return codebook[idx].to(w.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        gw = g if ctx.needs_input_grad[0] else None
        gc = None
        if ctx.needs_input_grad[1]:
            # Han et al.: a shared weight's gradient is the sum of its members' gradients.
            gc = torch.zeros(ctx.k, dtype=ctx.cb_dtype, device=g.device).index_add_(0, idx.reshape(-1), g.reshape(-1).to(ctx.cb_dtype))
        return gw, gc, None


def codebook_quantize(w: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Replace every weight by its nearest codebook entry: ``q_i = c[argmin_k |w_i - c_k|]``.

    Ties go to the smaller entry; the codebook may be in any order. Quantizing twice changes
    nothing.

    Gradients: ``dL/dw = dL/dq`` (straight-through) and, if ``codebook`` requires grad,
    ``dL/dc_k = sum_{i: idx_i = k} dL/dq_i`` — Deep Compression's centroid fine-tuning.

    Example:
        >>> import torch
        >>> w = torch.tensor([0.1, 0.4, 0.6, 2.0], requires_grad=True)
        >>> cb = torch.tensor([0.0, 1.0], requires_grad=True)
        >>> q = codebook_quantize(w, cb); q.tolist()
        [0.0, 0.0, 1.0, 1.0]
        >>> (q * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
        >>> w.grad.tolist(), cb.grad.tolist()
        ([1.0, 2.0, 3.0, 4.0], [3.0, 7.0])
    """
    idx = codebook_indices(w, codebook)
    return _CodebookSTE.apply(w, codebook, idx)

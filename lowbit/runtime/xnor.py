"""Bitwise execution of binary (±1) layers: sign packing, XNOR-popcount GEMM, binary linear / conv2d.

A ±1 vector of length ``n`` is stored as ``W = ceil(n / 64)`` 64-bit words: element ``k`` is bit
``k % 64`` of word ``k // 64`` (LSB first, as :mod:`lowbit.export.bitpack`), bit ``1`` for
``x >= 0`` (``sign(0) = +1``, the BNN convention; NaN packs as ``-1``), and the ``64 W - n`` tail
bits are zero. For two such vectors, agreements count ``+1`` and disagreements ``-1``, so

.. math::

    a \\cdot b = n - 2\\,\\mathrm{popcount}(a \\oplus b)
              = 2\\,\\mathrm{popcount}(\\overline{a \\oplus b}) - n ,

computed exactly in integers. Zero padding of a convolution is not a ±1 value; with a validity
mask ``m`` (bit ``1`` where the input position is real) the dot over the valid positions is

.. math::

    a \\cdot_m b = \\mathrm{popcount}(m) - 2\\,\\mathrm{popcount}((a \\oplus b) \\wedge m)
                = 2\\,\\mathrm{popcount}(\\overline{a \\oplus b} \\wedge m) - \\mathrm{popcount}(m) ,

which equals ``F.conv2d(sign(x), sign(w), padding=p)`` (that pads with 0) bit for bit. One kernel
computes both: the plain product is the masked one with a single mask row (all ones, tail cleared).

==========================  ==========================  =====================================
function                    input                       output
==========================  ==========================  =====================================
``pack_signs(x)``           ``(..., n)`` real           ``(..., ceil(n/64))`` ``torch.int64``
``unpack_signs(p, n)``      ``(..., ceil(n/64))`` int64 ``(..., n)`` float32 of ±1
``xnor_matmul(a, b, n)``    ``(M, W)``, ``(N, W)``      ``(M, N)`` int32 ``= A @ B.T``
``binary_linear``           ``x (..., n)``, ``w (N, W)``  ``(..., N)`` in ``x.dtype``
``pack_conv_weight(w)``     ``(C_out, C_in, kh, kw)``   ``(C_out, kh, kw, ceil(C_in/64))`` int64
``binary_conv2d``           ``x (B, C_in, H, W)``       ``(B, C_out, H_out, W_out)`` in ``x.dtype``
==========================  ==========================  =====================================

Packed words are ``torch.int64`` tensors holding the uint64 bit pattern (bit 63 is the sign bit),
so they move, save and slice like any tensor; the numba kernels see them as ``numpy.uint64``
through a zero-copy view.

Convolution packs **channels** innermost (the weight as ``w.permute(0, 2, 3, 1)``, the input as
NHWC), so im2col copies whole words (one per 64 channels per tap) instead of single bits, and the
validity mask is per tap: ``kh * kw * ceil(C_in / 64)`` words per output position. A bit-level
im2col of the NCHW ``(C_in, kh, kw)`` order measured as slow as the float convolution itself.

Kernel choice — numba (``pip install 'lowbit[binary]'``): the GEMM is written once in Python and
compiled by ``@njit(parallel=True, cache=True)`` for the host CPU, where LLVM recognises the SWAR
popcount as ``popcnt`` / AVX-512 ``vpopcntq`` and vectorises the word loop; ``prange`` spreads
output tiles over ``torch.get_num_threads()`` threads. numba and llvmlite ship manylinux / macOS /
Windows wheels, need no compiler at run time, and the compiled kernels are cached on disk (first
use compiles for ~3 s once). A C extension would need a compiler at install time or per-platform
wheels built by this project; ``torch`` has no popcount. Measured by bench/xnor_kernel.py
(2 threads, 2-core AMD EPYC with AVX-512 VPOPCNTDQ, shared with another job): 256x4096 · 4096x4096
xnor GEMM 16.0 ms vs ``torch.mm`` fp32 104.0 ms (**6.5x**; 6.5x with activation packing included);
50176x2304 · 2304x256 100.7 ms vs 657.4 ms (6.5x); all outputs bit-exact.
Without numba, a pure-torch fallback runs the same bit arithmetic (XOR, AND and a SWAR popcount on
``int64``, on any device): exact, but slower than float matmul. :func:`xnor_backend` names the
active one.

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> x, w = torch.randn(3, 100), torch.randn(5, 100)
    >>> xp, wp = pack_signs(x), pack_signs(w)
    >>> xp.shape, xp.dtype
    (torch.Size([3, 2]), torch.int64)
    >>> torch.equal(unpack_signs(xp, 100), binarize(x))
    True
    >>> dot = xnor_matmul(xp, wp, 100)
    >>> torch.equal(dot, (binarize(x) @ binarize(w).T).int())
    True
    >>> alpha = w.abs().mean(1)
    >>> torch.equal(binary_linear(x, wp, 100, alpha=alpha), F.linear(binarize(x), binarize(w)) * alpha)
    True
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, UnsupportedError

WORD_BITS = 64

# Rows of A x rows of B per parallel task: 32 x 64 outputs; for W = 64 words both operand tiles
# (16 KiB + 32 KiB) stay in L1/L2 while every word of A is reused 64 times.
_TILE_M = 32
_TILE_N = 64
# SWAR popcount constants (Hacker's Delight 5-2).
_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_ONE = np.uint64(1)
_TWO = np.uint64(2)
_FOUR = np.uint64(4)
_SHIFT = np.uint64(56)
# The kernels below are plain Python over numpy arrays and are only ever run compiled. numba
# resolves globals at compile time: `_prange` is `range` until `_numba_kernels` binds it to
# `numba.prange` (imported lazily, so `import lowbit` does not pay for numba).
_prange = range


def _xnor_gemm_kernel(a, mask, count, b, out):  # pragma: no cover - compiled by numba
    """``out[i, j] = count[r] - 2 popcount((a[i] ^ b[j]) & mask[r])`` with ``r = i % len(mask)``."""
    M, W = a.shape
    N = b.shape[0]
    L = mask.shape[0]
    tiles_n = (N + _TILE_N - 1) // _TILE_N
    tiles = ((M + _TILE_M - 1) // _TILE_M) * tiles_n
    for t in _prange(tiles):
        i0 = (t // tiles_n) * _TILE_M
        j0 = (t % tiles_n) * _TILE_N
        for i in range(i0, min(M, i0 + _TILE_M)):
            r = i % L
            for j in range(j0, min(N, j0 + _TILE_N)):
                s = np.uint64(0)
                for k in range(W):
                    v = (a[i, k] ^ b[j, k]) & mask[r, k]
                    # SWAR popcount: LLVM folds it into one popcnt (vpopcntq when vectorised).
                    v = v - ((v >> _ONE) & _M1)
                    v = (v & _M2) + ((v >> _TWO) & _M2)
                    v = (v + (v >> _FOUR)) & _M4
                    s += (v * _H01) >> _SHIFT
                out[i, j] = count[r] - 2 * np.int64(s)


def _pack_rows_kernel(x, out):  # pragma: no cover - compiled by numba
    """``out[i, k]`` = bits ``x[i, 64k + j] >= 0`` at position ``j`` (tail bits zero)."""
    M, n = x.shape
    W = out.shape[1]
    for i in _prange(M):
        for k in range(W):
            base = WORD_BITS * k
            word = np.uint64(0)
            for j in range(min(WORD_BITS, n - base)):
                word |= np.uint64(x[i, base + j] >= 0) << np.uint64(j)
            out[i, k] = word


@functools.cache
def _numba_kernels() -> dict | None:
    """Compile (or load from numba's on-disk cache) the kernels; ``None`` when numba is unusable."""
    global _prange
    try:
        import numba
    except ImportError:
        return None
    _prange = numba.prange
    gemm_sig = "void(uint64[:, ::1], uint64[:, ::1], int64[::1], uint64[:, ::1], int32[:, ::1])"
    pack_sigs = ["void(float32[:, ::1], uint64[:, ::1])", "void(float64[:, ::1], uint64[:, ::1])"]
    last: Exception | None = None
    for cache in (True, False):  # a read-only install without a user cache dir cannot cache
        try:
            return {
                "numba": numba,
                "gemm": numba.njit(gemm_sig, parallel=True, cache=cache)(_xnor_gemm_kernel),
                "pack": numba.njit(pack_sigs, parallel=True, cache=cache)(_pack_rows_kernel),
            }
        except Exception as e:  # numba raises many error types; any of them means "not usable here"
            last = e
    warnings.warn(f"numba is installed but its XNOR kernels failed to compile ({last}); using the slower pure-torch backend", stacklevel=3)
    return None


def xnor_backend() -> str:
    """The active XNOR-popcount backend: ``"numba"`` (compiled, multi-threaded) or ``"torch"``.

    The first call compiles the numba kernels (or loads them from numba's cache).

    Example:
        >>> xnor_backend() in ("numba", "torch")
        True
    """
    return "numba" if _numba_kernels() is not None else "torch"


def _run_numba(kernels: dict, name: str, *args) -> None:
    """Run a parallel kernel on as many threads as torch uses (``torch.set_num_threads``)."""
    numba = kernels["numba"]
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        kernels[name](*args)
    finally:
        numba.set_num_threads(previous)


def _as_u64(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().numpy().view(np.uint64)


def _popcount_torch(v: torch.Tensor) -> torch.Tensor:
    """Popcount of ``int64`` words (bit patterns), SWAR; ``>>`` is arithmetic but every mask clears bit 63."""
    v = v - ((v >> 1) & 0x5555555555555555)
    v = (v & 0x3333333333333333) + ((v >> 2) & 0x3333333333333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (v * 0x0101010101010101) >> 56  # int64 multiply wraps mod 2^64; the top byte is <= 64


def _tail_mask(n: int) -> int:
    """The valid bits of the last word of an ``n``-vector, as a signed int64 bit pattern."""
    rem = n - WORD_BITS * (math.ceil(n / WORD_BITS) - 1)
    return -1 if rem == WORD_BITS else (1 << rem) - 1


def _masked_gemm(a: torch.Tensor, mask: torch.Tensor, count: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out[i, j] = count[r] - 2 popcount((a[i] ^ b[j]) & mask[r])``, ``r = i % L`` (int32, exact)."""
    M, N, L = a.shape[0], b.shape[0], mask.shape[0]
    kernels = _numba_kernels() if a.device.type == "cpu" else None
    if kernels is not None:
        out = np.empty((M, N), dtype=np.int32)
        if M and N:
            _run_numba(kernels, "gemm", _as_u64(a), _as_u64(mask), count.contiguous().numpy(), _as_u64(b), out)
        return torch.from_numpy(out)
    out = torch.empty(M, N, dtype=torch.int32, device=a.device)
    step = max(1, (1 << 22) // max(1, N * a.shape[1]))  # bound the (rows, N, W) int64 temporary to 32 MiB
    for i0 in range(0, M, step):
        r = torch.arange(i0, min(M, i0 + step), device=a.device) % L
        v = (a[i0 : i0 + step, None, :] ^ b[None]) & mask[r, None, :]
        out[i0 : i0 + step] = (count[r, None] - 2 * _popcount_torch(v).sum(-1)).to(torch.int32)
    return out


# ----------------------------------------------------------------------------- validation helpers
def _check_packed(name: str, p, ndim: int | None = 2) -> None:
    if not isinstance(p, torch.Tensor):
        raise UnsupportedError(f"{name} must be a torch.Tensor of packed words from pack_signs, got {type(p).__name__}")
    if p.dtype != torch.int64:
        raise UnsupportedError(f"{name} must hold packed words as torch.int64 (from pack_signs), got {p.dtype}; pack ±1 values with pack_signs first")
    if ndim is not None and p.dim() != ndim:
        raise ConfigError(f"{name} must be {ndim}-D (rows, words), got shape {tuple(p.shape)}; reshape to (-1, words) first")


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n (the length of the ±1 vectors) must be a positive int, got {n!r}")
    return n


def _check_words(name: str, p: torch.Tensor, n: int) -> None:
    words = math.ceil(n / WORD_BITS)
    if p.shape[-1] != words:
        raise ConfigError(
            f"{name} has {p.shape[-1]} words per row but n={n} needs ceil({n}/64) = {words}; pass the n that was given to pack_signs"
        )


def _check_real(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise UnsupportedError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise UnsupportedError(f"{name} must be a floating-point tensor, got {x.dtype}; cast with .float()")


def _channel_vector(name: str, v, channels: int):
    """``alpha`` / ``bias``: None, a number, or a tensor of ``channels`` entries (returned flat)."""
    if v is None or isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    if not isinstance(v, torch.Tensor):
        raise UnsupportedError(f"{name} must be None, a number or a tensor, got {type(v).__name__}")
    if v.numel() != channels and v.dim() != 0:
        raise ConfigError(f"{name} has shape {tuple(v.shape)} but the layer has {channels} output channels; give one value per output channel")
    return v if v.dim() == 0 else v.reshape(channels)


# ----------------------------------------------------------------------------- public API
def binarize(x: torch.Tensor) -> torch.Tensor:
    """The BNN sign: ``+1`` where ``x >= 0`` (so ``sign(0) = +1``), ``-1`` elsewhere (NaN included).

    This is the float simulation that the bitwise functions reproduce; ``torch.sign`` differs at 0.

    Example:
        >>> binarize(torch.tensor([-2.0, -0.0, 0.0, 3.0])).tolist()
        [-1.0, 1.0, 1.0, 1.0]
    """
    return torch.where(x >= 0, torch.ones((), dtype=x.dtype, device=x.device), -torch.ones((), dtype=x.dtype, device=x.device))


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """Pack the signs of the last dimension, 64 per word.

    ``x`` of shape ``(..., n)`` becomes ``(..., ceil(n / 64))`` ``torch.int64`` words (the uint64 bit
    pattern): bit ``j`` of word ``k`` is ``x[..., 64 k + j] >= 0``; tail bits are zero.

    Args:
        x: real or signed-integer tensor with at least one dimension.

    Returns:
        The packed words, on ``x``'s device.

    Raises:
        UnsupportedError: ``x`` is not a tensor, or is bool / complex / unsigned.
        ConfigError: ``x`` is 0-D or its last dimension is empty.

    Example:
        >>> p = pack_signs(torch.tensor([[1.0, -1.0, 0.0, -3.0]]))
        >>> p.tolist()  # bits 0 and 2 set: 0b0101
        [[5]]
        >>> pack_signs(-torch.ones(64)).tolist(), pack_signs(torch.ones(64)).tolist()  # bit 63 is int64's sign bit
        ([0], [-1])
    """
    if not isinstance(x, torch.Tensor):
        raise UnsupportedError(f"pack_signs takes a torch.Tensor, got {type(x).__name__}")
    if x.dtype in (torch.bool, torch.uint8) or x.is_complex():
        raise UnsupportedError(f"pack_signs needs signed real values (float or signed int), got {x.dtype}; convert 0/1 bits with 2 * b - 1 first")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ConfigError(f"pack_signs packs the last dimension, which must be non-empty; got shape {tuple(x.shape)}")
    n = x.shape[-1]
    words = math.ceil(n / WORD_BITS)
    kernels = _numba_kernels() if x.device.type == "cpu" else None
    if kernels is not None:
        rows = x.detach().reshape(-1, n)
        if rows.dtype not in (torch.float32, torch.float64):
            rows = rows.float()  # sign-preserving for every signed real dtype
        out = np.empty((rows.shape[0], words), dtype=np.uint64)
        if out.size:
            _run_numba(kernels, "pack", rows.contiguous().numpy(), out)
        return torch.from_numpy(out.view(np.int64)).reshape(*x.shape[:-1], words)
    bits = F.pad((x.detach() >= 0).to(torch.int64), (0, words * WORD_BITS - n))
    weights = torch.tensor([1 << j for j in range(63)] + [-(1 << 63)], dtype=torch.int64, device=x.device)
    # distinct powers of two add without carries; bit 63 enters as -2^63, which is its int64 pattern
    return (bits.reshape(*x.shape[:-1], words, WORD_BITS) * weights).sum(-1)


def unpack_signs(packed: torch.Tensor, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`pack_signs` on ±1 inputs: ``(..., ceil(n/64))`` words to ``(..., n)`` of ±1.

    Args:
        packed: ``torch.int64`` words from :func:`pack_signs`.
        n: the length of the packed vectors (tail bits past ``n`` are ignored).
        dtype: floating dtype of the result.

    Raises:
        UnsupportedError: ``packed`` is not an ``int64`` tensor.
        ConfigError: ``n`` is not positive or does not match the number of words.

    Example:
        >>> x = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, 1.0]])
        >>> unpack_signs(pack_signs(x), 3).tolist()
        [[1.0, -1.0, -1.0], [-1.0, 1.0, 1.0]]
    """
    _check_packed("packed", packed, ndim=None)
    n = _check_n(n)
    if packed.dim() == 0:
        raise ConfigError("packed must have a last dimension of words, got a 0-D tensor")
    _check_words("packed", packed, n)
    shifts = torch.arange(WORD_BITS, device=packed.device)
    bits = ((packed[..., None] >> shifts) & 1).reshape(*packed.shape[:-1], -1)[..., :n]
    return (bits * 2 - 1).to(dtype)


def xnor_matmul(a_packed: torch.Tensor, b_packed: torch.Tensor, n: int) -> torch.Tensor:
    """Exact ``A @ B.T`` of ±1 matrices from their packed rows: ``n - 2 popcount(a ^ b)``.

    Args:
        a_packed: ``(M, W)`` ``torch.int64`` words, ``W = ceil(n / 64)``.
        b_packed: ``(N, W)`` ``torch.int64`` words.
        n: the length of the ±1 rows; bits past ``n`` (padding) never contribute, whatever they hold.

    Returns:
        ``(M, N)`` ``torch.int32`` dot products, each in ``[-n, n]``. The numba backend runs on
        ``torch.get_num_threads()`` threads.

    Raises:
        UnsupportedError: an operand is not an ``int64`` tensor, or they live on different devices.
        ConfigError: an operand is not 2-D, ``n`` is not positive, or the word counts disagree.

    Example:
        >>> a = torch.tensor([[1.0, 1.0, -1.0], [-1.0, -1.0, -1.0]])
        >>> b = torch.tensor([[1.0, -1.0, -1.0]])
        >>> xnor_matmul(pack_signs(a), pack_signs(b), 3).tolist()
        [[1], [1]]
    """
    _check_packed("a_packed", a_packed)
    _check_packed("b_packed", b_packed)
    n = _check_n(n)
    _check_words("a_packed", a_packed, n)
    _check_words("b_packed", b_packed, n)
    if a_packed.device != b_packed.device:
        raise UnsupportedError(f"a_packed is on {a_packed.device} but b_packed on {b_packed.device}; move both to one device")
    words = a_packed.shape[1]
    mask = torch.full((1, words), -1, dtype=torch.int64, device=a_packed.device)
    mask[0, -1] = _tail_mask(n)
    count = torch.tensor([n], dtype=torch.int64, device=a_packed.device)
    return _masked_gemm(a_packed, mask, count, b_packed)


def binary_linear(x: torch.Tensor, w_packed: torch.Tensor, n: int, alpha=None, bias=None) -> torch.Tensor:
    """Binary linear layer by XNOR-popcount: ``(sign(x) @ sign(w).T) * alpha + bias``.

    ``x`` is binarized (:func:`binarize`) and packed on the fly; the integer products are exact and
    the float scaling uses the same two operations as the float simulation, so the result equals
    ``F.linear(binarize(x), binarize(w)) * alpha + bias`` bit for bit in float32 (``n < 2^24``) and
    float64.

    Args:
        x: ``(..., n)`` floating tensor.
        w_packed: ``(N, ceil(n / 64))`` words, ``pack_signs(w)`` of the ``(N, n)`` weight.
        n: the input features.
        alpha: optional scale, a number or one value per output channel (``N``).
        bias: optional bias, a number or one value per output channel.

    Returns:
        ``(..., N)`` in ``x.dtype`` (type promotion with ``alpha`` / ``bias`` as in torch).

    Raises:
        UnsupportedError: ``x`` is not floating, or ``w_packed`` is not packed words.
        ConfigError: ``x.shape[-1] != n``, mismatched word counts, or ``alpha`` / ``bias`` of the wrong size.

    Example:
        >>> w = torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, -1.0]])
        >>> x = torch.tensor([[0.5, -2.0, 0.0]])
        >>> binary_linear(x, pack_signs(w), 3, alpha=torch.tensor([0.5, 2.0]), bias=torch.tensor([0.0, 1.0])).tolist()
        [[1.5, -1.0]]
    """
    _check_real("x", x)
    n = _check_n(n)
    if x.dim() == 0 or x.shape[-1] != n:
        raise ConfigError(f"x has shape {tuple(x.shape)} but the layer takes n={n} input features in the last dimension")
    _check_packed("w_packed", w_packed)
    _check_words("w_packed", w_packed, n)
    out_features = w_packed.shape[0]
    alpha = _channel_vector("alpha", alpha, out_features)
    bias = _channel_vector("bias", bias, out_features)
    dot = xnor_matmul(pack_signs(x.reshape(-1, n)), w_packed.to(x.device), n)
    y = dot.to(device=x.device, dtype=x.dtype).reshape(*x.shape[:-1], out_features)
    if alpha is not None:
        y = y * alpha
    if bias is not None:
        y = y + bias
    return y


def pack_conv_weight(w: torch.Tensor) -> torch.Tensor:
    """Pack a ``(C_out, C_in, kh, kw)`` weight for :func:`binary_conv2d`, channels innermost.

    Returns ``pack_signs(w.permute(0, 2, 3, 1))``: ``(C_out, kh, kw, ceil(C_in / 64))`` int64 words.

    Example:
        >>> pack_conv_weight(torch.randn(8, 3, 3, 3)).shape
        torch.Size([8, 3, 3, 1])
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 4:
        raise ConfigError(f"pack_conv_weight takes a 4-D (C_out, C_in, kh, kw) tensor, got {getattr(w, 'shape', type(w).__name__)}")
    return pack_signs(w.permute(0, 2, 3, 1))


def _pair(name: str, v, minimum: int) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else None
    if pair is None or len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) and p >= minimum for p in pair):
        raise ConfigError(f"{name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return pair


def binary_conv2d(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    weight_shape: Sequence[int],
    stride=1,
    padding=0,
    alpha=None,
    bias=None,
    dilation=1,
    groups: int = 1,
) -> torch.Tensor:
    """Binary 2-D convolution by word-level im2col + masked XNOR-popcount GEMM.

    Each output position's patch is ``kh * kw`` taps of ``ceil(C_in / 64)`` channel words; a tap
    that falls in the zero padding has mask ``0``, a real tap mask ``1`` on its ``C_in`` channel
    bits, and ``dot = popcount(m) - 2 popcount((a ^ w) & m)`` is the sum over real positions
    only — what ``F.conv2d`` of the zero-padded ±1 input computes. Then, as the float simulation:

    ``F.conv2d(binarize(x), binarize(w), stride=stride, padding=padding) * alpha.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)``

    bit for bit (float32 with ``C_in kh kw < 2^24``, or float64).

    Args:
        x: ``(B, C_in, H, W)`` floating tensor.
        w_packed: ``(C_out, kh, kw, ceil(C_in / 64))`` words from :func:`pack_conv_weight`.
        weight_shape: ``(C_out, C_in, kh, kw)`` of the float weight.
        stride: int or ``(sh, sw)``.
        padding: int or ``(ph, pw)`` of zeros on each side.
        alpha: optional scale, a number or one value per output channel.
        bias: optional bias, a number or one value per output channel.
        dilation: only 1 is supported.
        groups: only 1 is supported.

    Returns:
        ``(B, C_out, H_out, W_out)`` contiguous, in ``x.dtype``.

    Raises:
        UnsupportedError: ``groups != 1``, ``dilation != 1``, or non-floating ``x``.
        ConfigError: shapes that disagree (``x`` channels, ``weight_shape``, ``w_packed`` layout),
            bad stride / padding, or an empty output.

    Example:
        >>> torch.manual_seed(0) and None
        >>> x, w = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3)
        >>> y = binary_conv2d(x, pack_conv_weight(w), w.shape, stride=2, padding=1)
        >>> y.shape, torch.equal(y, F.conv2d(binarize(x), binarize(w), stride=2, padding=1))
        (torch.Size([2, 4, 3, 3]), True)
    """
    if groups != 1:
        raise UnsupportedError(f"binary_conv2d supports groups=1 only, got groups={groups!r}; run grouped / depthwise binary convs in float")
    if dilation not in (1, (1, 1), [1, 1]):
        raise UnsupportedError(f"binary_conv2d supports dilation=1 only, got dilation={dilation!r}")
    _check_real("x", x)
    if x.dim() != 4:
        raise ConfigError(f"x must be 4-D (B, C_in, H, W), got shape {tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)")
    if len(weight_shape) != 4 or not all(isinstance(s, int) and s > 0 for s in weight_shape):
        raise ConfigError(f"weight_shape must be (C_out, C_in, kh, kw) of positive ints, got {tuple(weight_shape)!r}")
    c_out, c_in, kh, kw = (int(s) for s in weight_shape)
    B, C, H, W = x.shape
    if C != c_in:
        raise ConfigError(f"x has {C} channels but weight_shape {tuple(weight_shape)} expects C_in={c_in}")
    _check_packed("w_packed", w_packed, ndim=None)
    words = math.ceil(c_in / WORD_BITS)
    if tuple(w_packed.shape) != (c_out, kh, kw, words):
        raise ConfigError(
            f"w_packed has shape {tuple(w_packed.shape)} but weight_shape {tuple(weight_shape)} packs to {(c_out, kh, kw, words)}; "
            "pack the float weight with pack_conv_weight(w) (channels innermost)"
        )
    sh, sw = _pair("stride", stride, 1)
    ph, pw = _pair("padding", padding, 0)
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    if Ho < 1 or Wo < 1:
        raise ConfigError(f"a {kh}x{kw} kernel with padding {(ph, pw)} does not fit the {H}x{W} input; pad more or use a smaller kernel")
    alpha = _channel_vector("alpha", alpha, c_out)
    bias = _channel_vector("bias", bias, c_out)

    def im2col(t: torch.Tensor) -> torch.Tensor:  # (B', H, W, words) -> (B', Ho, Wo, kh, kw, words)
        t = F.pad(t, (0, 0, pw, pw, ph, ph))
        return t.unfold(1, kh, sh).unfold(2, kw, sw).permute(0, 1, 2, 4, 5, 3)

    xp = pack_signs(x.permute(0, 2, 3, 1))  # (B, H, W, words): channels innermost, like the weight
    cols = im2col(xp).reshape(B * Ho * Wo, kh * kw * words)
    # one mask row per output position, shared by the whole batch: all ones on a real tap's channel
    # bits (tail cleared), zeros on a padding tap
    tap = torch.full((words,), -1, dtype=torch.int64, device=x.device)
    tap[-1] = _tail_mask(c_in)
    valid = im2col(torch.ones(1, H, W, 1, dtype=torch.int64, device=x.device))  # 1 on real taps, 0 on padding
    mask = (valid * tap).reshape(Ho * Wo, kh * kw * words)
    count = valid.reshape(Ho * Wo, kh * kw).sum(1) * c_in
    dot = _masked_gemm(cols, mask, count, w_packed.to(x.device).reshape(c_out, kh * kw * words))
    y = dot.to(device=x.device, dtype=x.dtype).reshape(B, Ho, Wo, c_out).permute(0, 3, 1, 2).contiguous()
    if alpha is not None:
        y = y * (alpha if isinstance(alpha, (int, float)) or alpha.dim() == 0 else alpha.view(1, -1, 1, 1))
    if bias is not None:
        y = y + (bias if isinstance(bias, (int, float)) or bias.dim() == 0 else bias.view(1, -1, 1, 1))
    return y

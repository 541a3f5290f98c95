"""Quantized gradient communication for ``DistributedDataParallel`` (a DDP communication hook).

DDP hands the hook one flat gradient bucket ``g`` (``n`` floats) per call. Each rank encodes its bucket
into a small ``uint8`` payload, the ranks all-gather the equal-size payloads, and every rank decodes all
``N`` of them and averages, so every rank ends with the same tensor ``(1/N) sum_r decode(payload_r)``.

=============  =========================================================  ====================  ==========
method         code of ``g_i``, scale ``s``                               payload bytes         unbiased
=============  =========================================================  ====================  ==========
``terngrad``   ``t_i = sign(g_i) Bernoulli(|g_i| / s)``, ``s = max|g|``   ``ceil(n/4) + 4``     yes (unclipped)
``int8``       ``q_i = floor(g_i / s + u_i)``, ``s = max|g| / 127``       ``n + 4``             yes
``int4``       ``q_i = floor(g_i / s + u_i)``, ``s = max|g| / 7``         ``ceil(n/2) + 4``     yes
``sign``       ``b_i = [g_i >= 0]``, ``s = mean|g|``; ``g ~ s (2b - 1)``  ``ceil(n/8) + 4``     no (use EF)
``ternary``    ``t_i = sign(g_i) [|g_i| > 0.7 mean|g|]``, ``s`` = mean kept  ``ceil(n/4) + 4``     no (use EF)
``fp32``       no compression: a plain all-reduce of the floats           ``4n``                exact
=============  =========================================================  ====================  ==========

(``u_i ~ U[0, 1)``.) Codes are bit-packed (:func:`pack_codes`) and followed by the float32 scale's 4 bytes.
The hook codes every parameter tensor of a bucket with its own scale (:func:`encode_segments`; the table's
payload is per tensor), and TernGrad first clips each tensor at 2.5 standard deviations (its paper's
layer-wise scaling and gradient clipping): one ``max |g|`` over a bucket of many layers would round the
layers with small gradients to zero almost everywhere.

**Error feedback** (1-bit SGD, Seide et al. 2014; EF-SignSGD, Karimireddy et al. 2019) keeps the part of
the gradient the code lost on the rank and adds it to the next step's gradient:
``v = g + e;  payload = encode(v);  e <- v - decode(payload)``, so ``g + e_old = decode(payload) + e_new``
and nothing is ever dropped, only delayed. ``sign`` and ``ternary`` are biased and need it; the stochastic
codes are unbiased (``E[decode(encode(g))] = g``) and default to no error feedback — measured on
fmnist-resnet QAT, error feedback on top of TernGrad's sampling noise cost accuracy (-1.26 pp vs -0.44 pp
without, ``bench/distributed.py``), while the deterministic ``ternary`` code with error feedback lost 0.29 pp.

**Byte model** (counted per rank by :class:`GradCompression`, for ``N`` ranks):

* a compressed bucket is a ring all-gather of a ``P``-byte payload (the sum of the per-tensor payloads):
  each rank sends ``(N - 1) P`` bytes;
* the ``fp32`` baseline is a ring all-reduce of ``n`` float32: each rank sends ``2 (N - 1) / N * 4 n`` bytes
  (reduce-scatter, then all-gather, of ``N`` chunks of ``n / N`` floats).

So ``ratio = fp32 / compressed = 8 n / (N P)``: with ``N = 2`` the baseline is ``4 n`` bytes and
``terngrad`` sends ``n / 4 + 4``, about 16x fewer. The all-gather grows with ``N`` while the all-reduce does
not: the ratio is about ``32 / N`` for ``terngrad``, ``64 / N`` for ``sign``, ``16 / N`` for ``int4`` and
``8 / N`` for ``int8`` (which stops saving anything at ``N = 8``).

Example:
    >>> import torch
    >>> g = torch.tensor([0.5, -1.0, 0.0, 0.25, -0.125])
    >>> payload = encode("terngrad", g, torch.Generator().manual_seed(0))
    >>> payload.dtype, payload.numel()                 # ceil(5 / 4) code bytes + 4 scale bytes
    (torch.uint8, 6)
    >>> decode("terngrad", payload, 5).abs().unique().tolist()   # every entry is 0 or s = max|g|
    [0.0, 1.0]
"""

# No ``from __future__ import annotations`` here: DDP's register_comm_hook compares the hook's annotations
# with the real ``dist.GradBucket`` and ``torch.futures.Future[torch.Tensor]`` and rejects strings.
import math

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError, DistributedError

METHODS = ("fp32", "terngrad", "int8", "int4", "sign", "ternary")

# Bits per code of each compressed method (terngrad's {-1, 0, 1} takes 2 bits).
_BITS = {"terngrad": 2, "int8": 8, "int4": 4, "sign": 1, "ternary": 2}

# Error feedback by default where the code is biased (sign, ternary). Not for the unbiased stochastic codes:
# measured on fmnist-resnet QAT (bench/distributed.py), TernGrad + EF lost 1.26 pp to fp32, TernGrad alone 0.44.
_DEFAULT_EF = {"fp32": False, "terngrad": False, "int8": False, "int4": False, "sign": True, "ternary": True}

_SCALE_BYTES = 4  # the float32 scale that ends every compressed payload


# --------------------------------------------------------------------------- validation helpers


def _check_method(fn: str, method: object) -> str:
    if method not in METHODS:
        raise ConfigError(f"{fn}: method={method!r} is unknown; use one of {list(METHODS)}")
    return method


def _check_grad(fn: str, g: object) -> torch.Tensor:
    """The gradient as float32 (half / bfloat16 buckets are widened; float32 is not copied)."""
    if not isinstance(g, torch.Tensor):
        raise ConfigError(f"{fn}: g must be a torch.Tensor, got {type(g).__name__}")
    if not g.is_floating_point():
        raise ConfigError(f"{fn}: g must be a floating-point tensor, got dtype {g.dtype}; convert it with g.float()")
    return g.detach().float()


def _check_generator(fn: str, generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"{fn}: generator must be a torch.Generator or None, got {type(generator).__name__}")


def _check_int(fn: str, name: str, v: object, lo: int, hi: int | None = None) -> int:
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
    if not ok:
        allowed = f"an int in {lo}..{hi}" if hi is not None else f"an int >= {lo}"
        raise ConfigError(f"{fn}: {name}={v!r} is invalid; use {allowed}")
    return v


def _amax(x: torch.Tensor) -> torch.Tensor:
    """``max |x|`` as a 0-d float32 (0 for an empty tensor, NaN if ``x`` holds a NaN)."""
    return x.abs().amax() if x.numel() else x.new_zeros(())


# --------------------------------------------------------------------------- codes


def terngrad(g: torch.Tensor, generator: torch.Generator | None = None, clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""TernGrad (Wen et al. 2017): stochastic ternary codes of a gradient, unbiased after scaling.

    .. math::
        s = \max_i |g_i|, \qquad t_i = \operatorname{sign}(g_i)\, b_i,\quad b_i \sim \mathrm{Bernoulli}(|g_i| / s),
        \qquad \mathbb{E}[s\, t_i] = s \operatorname{sign}(g_i) |g_i| / s = g_i.

    ``b_i = [u_i < |g_i| / s]`` with ``u_i ~ U[0, 1)`` drawn from ``generator``. The largest entry is always
    kept; an all-zero ``g`` gives ``s = 0`` and all-zero codes. A non-finite ``g`` gives a non-finite ``s``,
    so the decoded bucket is non-finite too (an overflow stays visible to a ``GradScaler``).

    Args:
        g: gradient, any shape, any floating dtype (computed in float32).
        generator: source of the uniforms (``None``: torch's global generator).
        clip: TernGrad's gradient clipping: ``g`` is first clamped to ``[-c sigma, c sigma]`` (``sigma`` the
            standard deviation of ``g``; the paper uses ``c = 2.5``), so one outlier does not set a scale that
            rounds almost everything else to zero. Biased for the clipped entries (error feedback returns
            the clipped part later). ``None``: no clipping.

    Returns:
        ``(codes, scale)``: ``int8`` codes in ``{-1, 0, 1}`` of ``g``'s shape and a 0-d float32 ``s``.

    Raises:
        ConfigError: ``g`` is not a floating-point tensor, or ``generator`` is not a ``torch.Generator``.

    Example:
        >>> g = torch.tensor([2.0, -1.0, 0.0, 0.5])
        >>> codes, s = terngrad(g, torch.Generator().manual_seed(0))
        >>> s.item(), codes[0].item(), codes[2].item()   # max|g| is always kept, 0 always dropped
        (2.0, 1, 0)
        >>> gen = torch.Generator().manual_seed(0)        # E[s t] = g over many draws
        >>> mean = torch.stack([s * terngrad(g, gen)[0] for _ in range(4000)]).mean(0)
        >>> torch.allclose(mean, g, atol=0.1)
        True
    """
    _check_generator("terngrad", generator)
    x = _check_grad("terngrad", g)
    if clip is not None:
        if not (isinstance(clip, int | float) and clip > 0):
            raise ConfigError(f"terngrad: clip must be a positive number of standard deviations or None, got {clip!r}")
        if x.numel() > 1:
            c = float(clip) * x.float().std()
            x = torch.maximum(torch.minimum(x, c), -c)
    s = _amax(x)
    p = x.abs() / torch.where(s > 0, s, torch.ones_like(s))  # s = 0 only when x = 0, where p = 0 anyway
    keep = torch.rand(x.shape, generator=generator, device=x.device) < p  # NaN p keeps nothing: codes stay valid
    codes = torch.where(keep, torch.sign(x), torch.zeros_like(x)).to(torch.int8)
    return codes, s


def uniform(g: torch.Tensor, bits: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Symmetric ``bits``-bit codes of a gradient with one scale per bucket and stochastic rounding.

    .. math::
        q_{max} = 2^{b-1} - 1, \qquad s = \max_i |g_i| / q_{max}, \qquad
        q_i = \operatorname{clamp}(\lfloor g_i / s + u_i \rfloor, -q_{max}, q_{max}),\quad u_i \sim U[0, 1),

    and ``E[floor(v + u)] = v`` makes the decoded ``s q`` unbiased: ``E[s q_i] = g_i`` (the clamp only
    catches float round-off at ``|g_i| = max|g|``). An all-zero ``g`` gives ``s = 0`` and zero codes.

    Args:
        g: gradient, any shape, any floating dtype (computed in float32).
        bits: code width, 2..8 (``int8`` and ``int4`` use 8 and 4; 2 bits is ``{-1, 0, 1}``).
        generator: source of the uniforms (``None``: torch's global generator).

    Returns:
        ``(codes, scale)``: ``int8`` codes in ``[-q_max, q_max]`` of ``g``'s shape and a 0-d float32 ``s``.

    Raises:
        ConfigError: ``bits`` outside 2..8, ``g`` not a floating-point tensor, or a bad ``generator``.

    Example:
        >>> g = torch.tensor([7.0, -3.5, 0.0, 1.75])
        >>> codes, s = uniform(g, 4, torch.Generator().manual_seed(0))
        >>> s.item(), codes[:3].tolist()          # s = 7 / 7; 7, -3.5 and 0 sit on or round to the grid
        (1.0, [7, -3, 0])
        >>> gen = torch.Generator().manual_seed(0)
        >>> mean = torch.stack([s * uniform(g, 4, gen)[0] for _ in range(4000)]).mean(0)
        >>> torch.allclose(mean, g, atol=0.05)   # E[s q] = g although -3.5 and 1.75 are off the grid
        True
    """
    _check_int("uniform", "bits", bits, 2, 8)
    _check_generator("uniform", generator)
    x = _check_grad("uniform", g)
    qmax = 2 ** (bits - 1) - 1
    s = _amax(x) / qmax
    v = x / torch.where(s > 0, s, torch.ones_like(s))
    q = torch.floor(v + torch.rand(x.shape, generator=generator, device=x.device))
    # NaN (non-finite g) -> 0 so the int8 cast is defined; the non-finite s still reaches the decoded bucket
    q = torch.nan_to_num(q, nan=0.0).clamp(-qmax, qmax)
    return q.to(torch.int8), s


def sign(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""1-bit sign code with one scale per bucket (1-bit SGD / EF-SignSGD, Karimireddy et al. 2019).

    .. math::
        b_i = [g_i \ge 0], \qquad s = \frac{1}{n} \sum_i |g_i| = \frac{\|g\|_1}{n}, \qquad
        \hat g_i = s\,(2 b_i - 1).

    ``sign(0)`` counts as ``+``. ``s`` is the least-squares scale, ``argmin_s ||g - s sign(g)||^2 =
    mean|g|`` (EF-SignSGD's choice). The code is biased: use it with error feedback.

    Args:
        g: gradient, any shape, any floating dtype (computed in float32).

    Returns:
        ``(bits, scale)``: a ``bool`` tensor of ``g``'s shape (``True`` = non-negative) and a 0-d float32 ``s``.

    Raises:
        ConfigError: ``g`` is not a floating-point tensor.

    Example:
        >>> bits, s = sign(torch.tensor([0.5, -1.5, 0.0, 2.0]))
        >>> bits.tolist(), s.item()               # s = (0.5 + 1.5 + 0 + 2) / 4
        ([True, False, True, True], 1.0)
    """
    x = _check_grad("sign", g)
    s = x.abs().mean() if x.numel() else x.new_zeros(())
    return x >= 0, s


def ternary(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Deterministic ternary code with a threshold (TWN's rule, Li & Liu 2016, applied to a gradient).

    .. math::
        \Delta = 0.7 \cdot \tfrac{1}{n} \sum_i |g_i|, \qquad t_i = \operatorname{sign}(g_i)\,[|g_i| > \Delta], \qquad
        s = \operatorname{mean}_{i: |g_i| > \Delta} |g_i|,

    the least-squares scale for the kept entries (TWN's approximation of ``argmin ||g - s t||^2``). Biased —
    small entries are dropped, the kept ones averaged — so it is meant for error feedback, which sends the
    dropped part later; unlike :func:`terngrad` it adds no sampling noise, and with error feedback it is
    the lower-variance way to send 2-bit ternary gradients.

    Example:
        >>> codes, s = ternary(torch.tensor([1.0, -3.0, 0.1, 0.0]))   # Delta = 0.7 * 1.025
        >>> codes.tolist(), s.item()
        ([1, -1, 0, 0], 2.0)
    """
    x = _check_grad("ternary", g)
    if not x.numel():
        return torch.zeros(x.shape, dtype=torch.int8, device=x.device), x.new_zeros(())
    a = x.abs()
    keep = a > 0.7 * a.mean()
    s = torch.where(keep.any(), (a * keep).sum() / keep.sum().clamp_min(1), a.new_zeros(()))
    return torch.where(keep, torch.sign(x), torch.zeros_like(x)).to(torch.int8), s


# --------------------------------------------------------------------------- bit packing


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``pack_codes`` without the checks (the encoders hand it valid codes)."""
    flat = codes.reshape(-1)
    if bits == 8:
        return flat.to(torch.int8).view(torch.uint8).clone()
    # low `bits` bits of each two's-complement code: -1 -> 0b11 in 2 bits (uint8 casts wrap modulo 256)
    u = flat.to(torch.int8).view(torch.uint8) & (2**bits - 1)
    shifts = torch.arange(bits, dtype=torch.uint8, device=u.device)
    stream = ((u[:, None] >> shifts) & 1).reshape(-1)  # element i -> stream bits [i*bits, (i+1)*bits), LSB first
    stream = torch.cat([stream, stream.new_zeros((-stream.numel()) % 8)]).reshape(-1, 8)
    out = stream[:, 0].clone()
    for k in range(1, 8):
        out |= stream[:, k] << k
    return out


def _unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """``unpack_codes`` without the checks."""
    if bits == 8:
        return packed.view(torch.int8).clone()
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed[:, None] >> shifts) & 1).reshape(-1)[: n * bits].reshape(n, bits)
    u = stream[:, 0].clone()
    for k in range(1, bits):
        u |= stream[:, k] << k
    if bits == 1:
        return u.to(torch.int8)
    u = u.to(torch.int16)
    return torch.where(u >= 2 ** (bits - 1), u - 2**bits, u).to(torch.int8)  # sign-extend


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    r"""Bit-pack integer codes into a flat ``uint8`` tensor of ``ceil(n * bits / 8)`` bytes.

    Code ``i`` (flattened) occupies bits ``[i b, (i+1) b)`` of a little-endian bit stream, bit ``k`` of the
    stream being bit ``k mod 8`` of byte ``floor(k / 8)`` — the layout of
    :func:`lowbit.export.bitpack.pack_bits`. A signed code is stored as its low ``b`` bits in two's
    complement, ``u = q mod 2^b`` (8-bit codes are their int8 bytes as is); 1-bit codes are the bits
    ``{0, 1}`` themselves (:func:`sign`'s output). So ternary codes take 2 bits (4 per byte), 4-bit codes
    2 per byte, signs 8 per byte.

    Args:
        codes: integer or bool codes, any shape: ``{0, 1}`` for ``bits = 1``, ``[-2^{b-1}, 2^{b-1} - 1]``
            otherwise.
        bits: code width, 1..8.

    Returns:
        ``uint8`` tensor of ``ceil(n * bits / 8)`` bytes (the tail bits of the last byte are 0).

    Raises:
        ConfigError: ``bits`` outside 1..8, ``codes`` not an integer / bool tensor, or a code outside the range.

    Example:
        >>> packed = pack_codes(torch.tensor([1, 0, -1, -1, 1], dtype=torch.int8), 2)
        >>> [f"{b:08b}" for b in packed.tolist()]   # 01 00 11 11 | 01, first code in the low bits
        ['11110001', '00000001']
        >>> unpack_codes(packed, 2, 5).tolist()
        [1, 0, -1, -1, 1]
    """
    _check_int("pack_codes", "bits", bits, 1, 8)
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ConfigError(f"pack_codes: codes must be an integer or bool tensor, got {got}")
    lo, hi = (0, 1) if bits == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if codes.numel():
        c = codes.reshape(-1).to(torch.int64)
        if int(c.min()) < lo or int(c.max()) > hi:
            raise ConfigError(f"pack_codes: codes span {int(c.min())}..{int(c.max())}, outside the {bits}-bit range {lo}..{hi}")
    return _pack(codes, bits)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    r"""Inverse of :func:`pack_codes`: the first ``n`` codes of a packed ``uint8`` buffer, as flat ``int8``.

    .. math::
        u_i = \sum_{k<b} \mathrm{bit}_{i b + k} 2^k, \qquad q_i = u_i - 2^b [u_i \ge 2^{b-1}]\ (b \ge 2),
        \qquad q_i = u_i\ (b = 1).

    Args:
        packed: 1-d ``uint8`` tensor of exactly ``ceil(n * bits / 8)`` bytes.
        bits: code width, 1..8.
        n: number of codes (``>= 0``).

    Returns:
        ``int8`` tensor of ``n`` codes: ``{0, 1}`` for ``bits = 1``, signed otherwise.

    Raises:
        ConfigError: ``bits`` / ``n`` out of range, or ``packed`` is not 1-d ``uint8`` of the right size.

    Example:
        >>> q = torch.tensor([-8, 7, -1, 0, 3], dtype=torch.int8)
        >>> packed = pack_codes(q, 4)
        >>> packed.numel(), unpack_codes(packed, 4, 5).tolist()
        (3, [-8, 7, -1, 0, 3])
    """
    _check_int("unpack_codes", "bits", bits, 1, 8)
    _check_int("unpack_codes", "n", n, 0)
    need = math.ceil(n * bits / 8)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != need:
        got = f"{packed.dtype} of shape {tuple(packed.shape)}" if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ConfigError(f"unpack_codes: {n} codes of {bits} bits need a 1-d uint8 tensor of {need} bytes, got {got}")
    return _unpack(packed, bits, n)


# --------------------------------------------------------------------------- payloads


def payload_bytes(method: str, n: int) -> int:
    r"""Size in bytes of :func:`encode`'s payload for a bucket of ``n`` values.

    .. math::
        P = \lceil n\, b / 8 \rceil + 4 \quad (b = 2, 8, 4, 1 \text{ for terngrad, int8, int4, sign}),
        \qquad P = 4 n \quad (\text{fp32}).

    Args:
        method: one of :data:`METHODS`.
        n: bucket size (``>= 0``).

    Raises:
        ConfigError: unknown ``method`` or negative ``n``.

    Example:
        >>> [payload_bytes(m, 1000) for m in METHODS]
        [4000, 254, 1004, 504, 129, 254]
    """
    _check_method("payload_bytes", method)
    _check_int("payload_bytes", "n", n, 0)
    if method == "fp32":
        return 4 * n
    return math.ceil(n * _BITS[method] / 8) + _SCALE_BYTES


def encode(method: str, g: torch.Tensor, generator: torch.Generator | None = None, clip: float | None = None) -> torch.Tensor:
    r"""Encode a gradient bucket into a ``uint8`` payload: packed codes, then the float32 scale's 4 bytes.

    .. math::
        \mathrm{payload} = \mathrm{pack}(\mathrm{codes}(g), b)\ \|\ \mathrm{bytes}(s),

    with ``codes, s`` from :func:`terngrad`, :func:`uniform` (``int8``: 8 bits, ``int4``: 4 bits) or
    :func:`sign`. ``fp32`` is the uncompressed baseline: the float32 bytes of ``g`` (no scale). The scale
    is in the machine's byte order (ranks of one job share it).

    Args:
        method: one of :data:`METHODS`.
        g: gradient bucket, any shape (flattened), any floating dtype.
        generator: source of the stochastic rounding (``None``: torch's global generator; unused by
            ``sign`` and ``fp32``).
        clip: ``terngrad`` only: clip at ``clip`` standard deviations first (:func:`terngrad`).

    Returns:
        1-d ``uint8`` tensor of :func:`payload_bytes` ``(method, g.numel())`` bytes.

    Raises:
        ConfigError: unknown ``method``, ``g`` not a floating-point tensor, or a bad ``generator``.

    Example:
        >>> g = torch.tensor([1.0, -0.5, 0.5, 0.0])
        >>> [encode(m, g, torch.Generator().manual_seed(0)).numel() for m in METHODS]
        [16, 5, 8, 6, 5, 5]
        >>> decode("sign", encode("sign", g), 4).tolist()     # mean|g| = 0.5, sign(0) = +
        [0.5, -0.5, 0.5, 0.5]
    """
    _check_method("encode", method)
    _check_generator("encode", generator)
    x = _check_grad("encode", g).reshape(-1)
    if method == "fp32":
        return x.contiguous().view(torch.uint8).clone()
    if method == "terngrad":
        codes, s = terngrad(x, generator, clip)
    elif method == "sign":
        codes, s = sign(x)
    elif method == "ternary":
        codes, s = ternary(x)
    else:
        codes, s = uniform(x, _BITS[method], generator)
    return torch.cat([_pack(codes, _BITS[method]), s.reshape(1).view(torch.uint8)])


def decode(method: str, payload: torch.Tensor, n: int) -> torch.Tensor:
    r"""Decode a payload of :func:`encode` back to ``n`` float32 values.

    .. math::
        \hat g = s\, q \quad (\text{terngrad, int8, int4}), \qquad
        \hat g = s\,(2 b - 1) \quad (\text{sign}), \qquad \hat g = g \quad (\text{fp32}).

    Args:
        method: one of :data:`METHODS` (the one that encoded the payload).
        payload: 1-d ``uint8`` tensor of :func:`payload_bytes` ``(method, n)`` bytes.
        n: number of values in the bucket.

    Returns:
        1-d float32 tensor of ``n`` values on ``payload``'s device.

    Raises:
        ConfigError: unknown ``method``, negative ``n``, or a payload of the wrong dtype / size.

    Example:
        >>> g = torch.tensor([3.5, -1.5, 0.0])                    # s = 3.5 / 7 = 0.5: every value on the grid
        >>> decode("int4", encode("int4", g, torch.Generator().manual_seed(0)), 3).tolist()
        [3.5, -1.5, 0.0]
    """
    need = payload_bytes(method, n)  # validates method and n
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1 or payload.numel() != need:
        got = f"{payload.dtype} of shape {tuple(payload.shape)}" if isinstance(payload, torch.Tensor) else type(payload).__name__
        raise ConfigError(f"decode: a {method} payload of {n} values is a 1-d uint8 tensor of {need} bytes, got {got}")
    if method == "fp32":
        return payload.clone().view(torch.float32)  # clone: a sliced buffer may sit at an offset float32 cannot view
    scale = payload[-_SCALE_BYTES:].clone().view(torch.float32)[0]
    codes = _unpack(payload[:-_SCALE_BYTES], _BITS[method], n).to(torch.float32)
    if method == "sign":
        codes = 2 * codes - 1
    return scale * codes


def encode_with_feedback(
    method: str, g: torch.Tensor, residual: torch.Tensor, generator: torch.Generator | None = None,
    sizes: list[int] | None = None, clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One error-feedback step: encode the gradient plus what earlier steps lost, and keep the new loss.

    .. math::
        v = g + e, \qquad \mathrm{payload} = \mathrm{encode}(v), \qquad e' = v - \mathrm{decode}(\mathrm{payload}),

    so ``g + e = decode(payload) + e'``: over steps every bit of gradient is sent, some of it late.
    Entries of ``e'`` that are not finite (an overflowed step under a ``GradScaler``) are set to 0, so one
    bad step does not poison the residual for good. With ``fp32``, ``e' = 0``.

    Args:
        method: one of :data:`METHODS`.
        g: gradient bucket, any floating dtype.
        residual: ``e``, float32 of ``g``'s shape (zeros at the first step). Not modified.
        generator: source of the stochastic rounding.
        sizes: segments with a scale each (:func:`encode_segments`; ``None``: one segment).
        clip: ``terngrad`` only: clip each segment at ``clip`` standard deviations first (:func:`terngrad`).

    Returns:
        ``(payload, new_residual)``: the ``uint8`` payload of ``v`` and ``e'`` (float32, flat).

    Raises:
        ConfigError: unknown ``method``, non-float ``g`` / ``residual``, or shapes that differ.

    Example:
        >>> g = torch.tensor([0.3, -0.1, 0.05, 0.0])
        >>> payload, e = encode_with_feedback("sign", g, torch.zeros(4))
        >>> torch.allclose(g, decode("sign", payload, 4) + e)     # g + e_old = decode + e_new
        True
    """
    x = _check_grad("encode_with_feedback", g).reshape(-1)
    e = _check_grad("encode_with_feedback", residual).reshape(-1)
    if tuple(g.shape) != tuple(residual.shape):
        raise ConfigError(f"encode_with_feedback: residual has shape {tuple(residual.shape)}, g has {tuple(g.shape)}; "
                          "keep one residual per bucket, zeros at the first step")
    v = x + e
    sizes = [v.numel()] if sizes is None else list(sizes)
    payload = encode_segments(method, v, sizes, generator, clip)
    new = v - decode_segments(method, payload, sizes)
    return payload, torch.where(torch.isfinite(new), new, torch.zeros_like(new))


def encode_segments(method: str, g: torch.Tensor, sizes: list[int], generator: torch.Generator | None = None,
                    clip: float | None = None) -> torch.Tensor:
    r""":func:`encode` each consecutive segment of ``g`` (one per parameter of a DDP bucket) with its own scale.

    .. math::
        \mathrm{payload} = \mathrm{encode}(g_{[0, n_0)}) \,\|\, \mathrm{encode}(g_{[n_0, n_0 + n_1)}) \,\|\, \dots

    One scale per parameter tensor (TernGrad's layer-wise scaling): a bucket holds many layers whose gradients
    differ by orders of magnitude, and one ``max |g|`` for all would round nearly every small-gradient layer
    to zero (huge variance). The price is 4 bytes per parameter tensor.

    >>> g = torch.tensor([100.0, -50.0, 0.01, -0.02])
    >>> p = encode_segments("int8", g, [2, 2], torch.Generator().manual_seed(0))
    >>> p.numel() == 2 * payload_bytes("int8", 2), torch.allclose(decode_segments("int8", p, [2, 2])[2:], g[2:], atol=1e-3)
    (True, True)
    """
    if sum(sizes) != g.numel():
        raise ConfigError(f"encode_segments: segment sizes sum to {sum(sizes)}, the gradient has {g.numel()} values")
    flat = g.reshape(-1)
    parts = flat.split(list(sizes)) if sizes else [flat]
    return torch.cat([encode(method, part, generator, clip) for part in parts])


def decode_segments(method: str, payload: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Inverse of :func:`encode_segments` (see there)."""
    lengths = [payload_bytes(method, n) for n in sizes]
    if sum(lengths) != payload.numel():
        raise ConfigError(f"decode_segments: {len(sizes)} segments of a {method} payload need {sum(lengths)} bytes, got {payload.numel()}")
    parts = payload.split(lengths)
    return torch.cat([decode(method, p, n) for p, n in zip(parts, sizes, strict=True)])


# --------------------------------------------------------------------------- the DDP hook


class GradCompression:
    r"""State of :func:`compression_hook`: the method, the per-bucket residuals, the RNG and the byte counts.

    One object per rank (per process). The stochastic rounding draws from a generator seeded from
    ``(seed, rank)`` (numpy ``SeedSequence``), so a run is reproducible and ranks draw independently.
    Residuals are kept per parameter, so they survive DDP rebuilding its buckets after the first
    iteration; they live in the process (a resumed run starts them at zero).

    Byte model, per rank, for a bucket of ``n`` values and ``N`` ranks (see the module docstring):

    .. math::
        \mathrm{bytes\_sent} \mathrel{+}= (N - 1)\, P, \qquad
        \mathrm{fp32\_bytes} \mathrel{+}= 2 \frac{N - 1}{N}\, 4 n, \qquad
        \mathrm{ratio} = \mathrm{fp32\_bytes} / \mathrm{bytes\_sent},

    with ``P`` = :func:`payload_bytes`; for ``fp32``, ``bytes_sent = 2 (N-1)/N * element_size * n`` (the
    bucket's own dtype, so equal to ``fp32_bytes`` for float32 gradients). Counts are floats: the all-reduce
    average is fractional when ``N`` does not divide ``n``.

    Args:
        method: one of :data:`METHODS`.
        error_feedback: keep residuals (``None``: the method's default — on for ``sign`` and ``ternary``,
            off for ``terngrad``, ``int8``, ``int4`` and ``fp32``). Not allowed for ``fp32``.
        seed: non-negative int seeding the per-rank generators.
        process_group: the group to communicate on (``None``: the default group).

    Attributes:
        bytes_sent: bytes this rank sent, under the model above.
        fp32_bytes: bytes a plain float32 all-reduce of the same buckets would have sent.
        buckets: buckets communicated.
        steps: iterations (calls for DDP's last bucket).

    Raises:
        ConfigError: unknown method, error feedback with ``fp32``, a bad ``error_feedback`` or ``seed``.

    Example:
        >>> state = GradCompression("sign")
        >>> state.stats()
        {'method': 'sign', 'error_feedback': True, 'bytes_sent': 0.0, 'fp32_bytes': 0.0, 'ratio': 1.0, 'buckets': 0, 'steps': 0}
        >>> GradCompression("int8").error_feedback
        False
    """

    def __init__(self, method: str = "terngrad", error_feedback: bool | None = None, seed: int = 0,
                 process_group: dist.ProcessGroup | None = None):
        self.method = _check_method("GradCompression", method)
        if error_feedback is None:
            error_feedback = _DEFAULT_EF[method]
        if not isinstance(error_feedback, bool):
            raise ConfigError(f"GradCompression: error_feedback must be True, False or None (the method's default), got {error_feedback!r}")
        if error_feedback and method == "fp32":
            with_ef = [m for m in METHODS if m != "fp32"]
            raise ConfigError(f"GradCompression: error_feedback=True needs a compressed method, not fp32 (which loses nothing); "
                              f"use one of {with_ef} or error_feedback=False")
        self.error_feedback = error_feedback
        self.seed = _check_int("GradCompression", "seed", seed, 0)
        # TernGrad's layer-wise gradient clipping at 2.5 sigma (the paper's setting); the other codes keep max|g|
        self.clip = 2.5 if method == "terngrad" else None
        self.process_group = process_group
        self.bytes_sent = 0.0
        self.fp32_bytes = 0.0
        self.buckets = 0
        self.steps = 0
        self._generator: torch.Generator | None = None
        self._residuals: dict[object, torch.Tensor] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """This rank's generator (created on first use, seeded from ``(seed, rank)``) on ``device``."""
        if self._generator is None or self._generator.device != device:
            rank = dist.get_rank(self.process_group) if dist.is_initialized() else 0
            seed = int(np.random.SeedSequence([self.seed, rank]).generate_state(1, np.uint64)[0])
            self._generator = torch.Generator(device=device).manual_seed(seed)
        return self._generator

    def residual(self, keys: list, sizes: list[int], device: torch.device) -> torch.Tensor:
        """The error-feedback residual of a bucket, assembled from per-parameter residuals (``keys``: one per
        segment, zeros for one not seen yet), so a bucket DDP rebuilds (after the first step) keeps them."""
        return torch.cat([self._residuals.get(k, torch.zeros(n, dtype=torch.float32, device=device))
                          for k, n in zip(keys, sizes, strict=True)])

    def keep_residual(self, keys: list, sizes: list[int], e: torch.Tensor) -> None:
        """Store a bucket's new residual per segment key (see :meth:`residual`)."""
        for k, part in zip(keys, e.split(list(sizes)), strict=True):
            self._residuals[k] = part.clone()

    def account(self, n: int, element_size: int, world: int, payload: int | None = None) -> None:
        """Add one bucket of ``n`` values to the byte counts (model in the class docstring); ``payload``:
        the bytes actually gathered per rank (default :func:`payload_bytes` of one segment)."""
        allreduce = 2 * (world - 1) / world * n
        self.fp32_bytes += allreduce * 4
        if self.method == "fp32":
            self.bytes_sent += allreduce * element_size
        else:
            self.bytes_sent += (world - 1) * (payload_bytes(self.method, n) if payload is None else payload)
        self.buckets += 1

    def stats(self) -> dict:
        """``{method, error_feedback, bytes_sent, fp32_bytes, ratio, buckets, steps}``; ``ratio`` is
        ``fp32_bytes / bytes_sent`` (1.0 before anything was sent, e.g. with one rank)."""
        ratio = self.fp32_bytes / self.bytes_sent if self.bytes_sent else 1.0
        return {"method": self.method, "error_feedback": self.error_feedback, "bytes_sent": self.bytes_sent,
                "fp32_bytes": self.fp32_bytes, "ratio": ratio, "buckets": self.buckets, "steps": self.steps}


def compression_hook(state: GradCompression, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    r"""DDP communication hook: average a gradient bucket across ranks through ``state.method``'s code.

    .. math::
        \bar g = \frac{1}{N} \sum_{r=0}^{N-1} \mathrm{decode}(\mathrm{encode}(g_r + e_r)),
        \qquad e_r \leftarrow g_r + e_r - \mathrm{decode}(\mathrm{encode}(g_r + e_r)) \ \text{(error feedback)}.

    ``fp32`` is torch's ``allreduce_hook``: divide by ``N`` (first, so half precision cannot overflow), then
    all-reduce SUM. The compressed methods all-gather the equal-size ``uint8`` payloads and decode and sum
    them in rank order on every rank, so every rank gets the bit-identical average. Register it with
    ``ddp_model.register_comm_hook(state, compression_hook)`` or use :func:`register`.

    Args:
        state: a :class:`GradCompression` (one per rank).
        bucket: the ``torch.distributed.GradBucket`` DDP passes.

    Returns:
        A future of the averaged bucket (the bucket's dtype and size).

    Example:
        What the hook computes, for two ranks' buckets without error feedback:

        >>> g0, g1 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 1.0])
        >>> gens = [torch.Generator().manual_seed(r) for r in (0, 1)]
        >>> avg = sum(decode("int8", encode("int8", g, gen), 3) for g, gen in zip((g0, g1), gens)) / 2
        >>> torch.allclose(avg, (g0 + g1) / 2, atol=2 / 127)    # each code is within one step s = max|g| / 127
        True
        >>> ddp_model.register_comm_hook(GradCompression("int8"), compression_hook)  # doctest: +SKIP
    """
    buf = bucket.buffer()
    group = state.process_group
    world = dist.get_world_size(group)
    state.steps += int(bucket.is_last())
    if state.method == "fp32":
        state.account(buf.numel(), buf.element_size(), world)
        buf.div_(world)
        return dist.all_reduce(buf, group=group, async_op=True).get_future().then(lambda fut: fut.value()[0])

    n = buf.numel()
    params = list(bucket.parameters())
    keys, sizes = [id(p) for p in params], [p.numel() for p in params]
    if sum(sizes) != n:  # padding in the bucket: one segment, its residual kept under the bucket
        keys, sizes = [("bucket", bucket.index(), n)], [n]
    generator = state.generator(buf.device)
    if state.error_feedback:
        payload, e = encode_with_feedback(state.method, buf.float(), state.residual(keys, sizes, buf.device), generator,
                                          sizes, state.clip)
        state.keep_residual(keys, sizes, e)
    else:
        payload = encode_segments(state.method, buf.float(), sizes, generator, state.clip)
    state.account(n, buf.element_size(), world, payload=payload.numel())
    gathered = [torch.empty_like(payload) for _ in range(world)]

    def average(fut: torch.futures.Future) -> torch.Tensor:
        fut.value()  # re-raises a failed all-gather here, in DDP's backward
        total = torch.zeros(n, dtype=torch.float32, device=buf.device)
        for p in gathered:  # rank order on every rank: the same float sums everywhere
            total += decode_segments(state.method, p, sizes)
        return (total / world).to(buf.dtype)

    return dist.all_gather(gathered, payload, group=group, async_op=True).get_future().then(average)


def register(ddp_model: DistributedDataParallel, method: str = "terngrad", error_feedback: bool | None = None,
             seed: int = 0) -> GradCompression:
    """Build a :class:`GradCompression` on ``ddp_model``'s process group and register :func:`compression_hook`.

    Call it once, before the first backward (DDP allows one communication hook per model). Read the byte
    counts from the returned state's :meth:`~GradCompression.stats`.

    Args:
        ddp_model: a ``torch.nn.parallel.DistributedDataParallel`` model.
        method, error_feedback, seed: as in :class:`GradCompression`.

    Returns:
        The state the hook updates.

    Raises:
        ConfigError: ``ddp_model`` is not DDP-wrapped, or a bad method / error_feedback / seed.
        DistributedError: no process group is up.

    Example:
        >>> state = register(DistributedDataParallel(model), "sign")  # doctest: +SKIP
        >>> state.stats()["ratio"]                                    # doctest: +SKIP
        30.4
    """
    if not isinstance(ddp_model, DistributedDataParallel):
        raise ConfigError(f"register: ddp_model must be a torch.nn.parallel.DistributedDataParallel, got {type(ddp_model).__name__}; "
                          "wrap the model with DistributedDataParallel(model) after init_process_group")
    if not dist.is_initialized():
        raise DistributedError("register: no process group is up; call lowbit.distributed.init_distributed() (under torchrun) first")
    state = GradCompression(method, error_feedback, seed, process_group=ddp_model.process_group)
    try:
        ddp_model.register_comm_hook(state, compression_hook)
    except RuntimeError as e:
        raise ConfigError(f"register: DDP refused the hook ({str(e).splitlines()[0]}); register once per model, "
                          "before the first backward") from None
    return state

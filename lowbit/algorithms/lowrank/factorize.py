"""Low-rank factorizations of single layers (pure functions: a layer in, a new ``nn.Sequential`` out).

=============  ==========================================  ===================================================
form           factorization of ``W``                      layers (in order)
=============  ==========================================  ===================================================
SVD (Linear)   ``W ~ U_r S_r V_r^T``  (out x in)           Linear(in, r, no bias), Linear(r, out, bias)
SVD (conv)     same, ``W`` as ``(C_out, C_in k_h k_w)``    Conv k_h x k_w (C_in -> r, stride, padding), Conv 1x1 (r -> C_out, bias)
Tucker-2       ``W ~ G x_0 U_out x_1 U_in``                Conv 1x1 (C_in -> r_in), Conv k_h x k_w core (r_in -> r_out, stride,
                                                           padding), Conv 1x1 (r_out -> C_out, bias)
CP             ``W ~ sum_r a_r o b_r o c_r o d_r``         Conv 1x1 (C_in -> R), depthwise k_h x 1 (vertical stride / padding),
                                                           depthwise 1 x k_w (horizontal), Conv 1x1 (R -> C_out, bias)
=============  ==========================================  ===================================================

Every factorization is computed in float64 and copied into layers of the original's dtype and
device; the original's bias goes to the last layer. SVD splits ``sqrt(S)`` into both factors and CP
balances the norms of each term's four vectors, so no factor carries the whole scale (better for
fp32 / fine-tuning). Padding, dilation and ``padding_mode`` are exact: the 1x1 layers commute with
any padding (no bias before the last layer), and CP's separable padding (vertical in the k x 1 layer,
horizontal in the 1 x k layer) is the 2-D padding.

Example:
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> conv = nn.Conv2d(8, 16, 3, padding=1)
    >>> seq = tucker2_conv(conv, (16, 8))            # full rank: exact
    >>> x = torch.randn(2, 8, 10, 10)
    >>> torch.allclose(seq(x), conv(x), atol=1e-5)
    True
    >>> macs_of(conv, (8, 10, 10)), macs_of(tucker2_conv(conv, (4, 4)), (8, 10, 10))
    (115200, 24000)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from ...errors import ConfigError, UnsupportedError

# ----------------------------------------------------------------------------- ranks


@contextlib.contextmanager
def _few_threads(work: float) -> Iterator[None]:
    """One intra-op thread for small factorization problems (the thread count is restored after, even on error).

    SVDs of conv-sized matrices and ALS sweeps are chains of small ops: below ~3e8 multiply-adds per op,
    thread hand-offs cost more than they save. Measured on 2 shared cores (fmnist-resnet, Tucker-2 at
    energy 0.9): 0.2 s single-threaded vs 43-64 s with 2 threads while another process kept the cores busy.
    ``work``: a rough multiply-add count of the largest op (``m n min(m, n)`` for an SVD)."""
    before = torch.get_num_threads()
    small = work < 2**28
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


def _svd_work(w: torch.Tensor) -> float:
    m, n = w.shape[0], w[0].numel()
    return float(m) * n * min(m, n) * max(1, w.ndim - 2)  # conv weights: several unfoldings




def choose_rank_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank ``r`` whose squared singular values keep ``energy`` of the total.

    Math: ``r = min{ r : sum_{i<r} s_i^2 >= energy * sum_i s_i^2 }`` (``s`` sorted descending). For a
    matrix this is the truncated SVD with relative Frobenius error ``||W - W_r||^2 / ||W||^2 <= 1 - energy``.
    An all-zero spectrum gives 1.

    Args:
        singular_values: 1-D, non-negative, in descending order.
        energy: fraction in (0, 1].

    Raises:
        ConfigError: ``energy`` outside (0, 1].

    Example:
        >>> choose_rank_energy(torch.tensor([3.0, 2.0, 1.0]), 0.9)   # 9 + 4 = 13 >= 0.9 * 14
        2
        >>> choose_rank_energy(torch.tensor([3.0, 2.0, 1.0]), 1.0)
        3
    """
    if isinstance(energy, bool) or not isinstance(energy, int | float) or not 0 < energy <= 1:
        raise ConfigError(f"energy={energy!r} is outside (0, 1]; it is the fraction of the squared singular values kept, e.g. 0.9")
    return _energy_rank(singular_values, float(energy))


def _energy_rank(s: torch.Tensor, energy: float) -> int:
    """:func:`choose_rank_energy` without validation; ``energy=0`` gives 1."""
    cum = torch.cumsum(s.double() ** 2, 0)
    if cum.numel() == 0 or cum[-1] <= 0:
        return 1
    return min(int((cum < energy * cum[-1]).sum()) + 1, cum.numel())


def mode_singular_values(weight: torch.Tensor, mode: int) -> torch.Tensor:
    """Singular values (descending) of the mode-``mode`` unfolding ``W_(mode)`` of a weight.

    ``W_(0)`` is ``(C_out, C_in k_h k_w)`` — the spectrum of SVD and of Tucker-2's output mode;
    ``W_(1)`` is ``(C_in, C_out k_h k_w)`` — Tucker-2's input mode.

    Example:
        >>> w = torch.zeros(4, 3, 1, 1); w[0, 0] = 2.0; w[1, 1] = 1.0
        >>> mode_singular_values(w, 0).tolist(), mode_singular_values(w, 1).tolist()
        ([2.0, 1.0, 0.0], [2.0, 1.0, 0.0])
    """
    with _few_threads(_svd_work(weight)):
        return torch.linalg.svdvals(_unfold(weight.detach().double(), mode))


def svd_max_rank(layer: nn.Module) -> int:
    """Largest SVD rank of a Linear / Conv2d: ``min(out, in)`` (conv: ``min(C_out, C_in k_h k_w)``).

    Example:
        >>> svd_max_rank(nn.Linear(20, 5)), svd_max_rank(nn.Conv2d(2, 64, 3))
        (5, 18)
    """
    w = layer.weight
    return min(w.shape[0], w[0].numel())


def cp_max_rank(layer: nn.Conv2d) -> int:
    """Largest CP rank accepted for a conv: ``C_out C_in k_h k_w / max(C_out, C_in, k_h, k_w)``.

    Every 4-way tensor has an exact CP decomposition with that many terms (one term per index of the
    three smaller modes); :func:`cp_conv` builds that one directly at this rank instead of fitting.

    Example:
        >>> cp_max_rank(nn.Conv2d(4, 8, 3))
        36
    """
    dims = tuple(layer.weight.shape)
    return math.prod(dims) // max(dims)


def _check_rank(what: str, r: object, max_r: int, where: str, why: str) -> int:
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= max_r:
        raise ConfigError(f"{what}={r!r} is outside 1..{max_r} for {where} ({why}); pick a rank between 1 and {max_r}")
    return r


def _describe(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return f"Linear({layer.in_features}, {layer.out_features})"
    k = "x".join(map(str, layer.kernel_size))
    return f"Conv2d({layer.in_channels}, {layer.out_channels}, {k}{', groups=' + str(layer.groups) if layer.groups != 1 else ''})"


def _check_conv(layer: nn.Module, method: str) -> None:
    if not isinstance(layer, nn.Conv2d):
        raise UnsupportedError(f"{method} decomposes an nn.Conv2d, got {type(layer).__name__}")
    if layer.groups != 1:
        raise UnsupportedError(f"{_describe(layer)} is a grouped / depthwise conv: its {layer.groups} groups already cost "
                               f"1/{layer.groups} of a dense conv and low-rank factors would not be cheaper; exclude it "
                               "(the default layer selection skips grouped convs)")


# ----------------------------------------------------------------------------- layer forms


class LowRankSequential(nn.Sequential):
    """An ``nn.Sequential`` that holds one layer's factorization; ``method`` (``svd`` / ``tucker2`` / ``cp``) says which.

    A plain ``nn.Sequential`` in every other respect (same forward, ``state_dict`` keys ``0.weight``, ...);
    the type lets :func:`~lowbit.algorithms.lowrank.decompose` leave existing factors alone by default.

    Example:
        >>> seq = LowRankSequential(nn.Linear(8, 2, bias=False), nn.Linear(2, 4), method="svd")
        >>> seq.method, isinstance(seq, nn.Sequential), list(seq.state_dict())
        ('svd', True, ['0.weight', '1.weight', '1.bias'])
    """

    def __init__(self, *layers: nn.Module, method: str) -> None:
        super().__init__(*layers)
        self.method = method

    def extra_repr(self) -> str:
        return f"method={self.method}"



def _conv(cin: int, cout: int, kernel, like: nn.Conv2d | None = None, *, stride=1, padding=0, dilation=1, groups: int = 1,
          bias: bool = False, device=None, dtype=None) -> nn.Conv2d:
    mode = like.padding_mode if like is not None else "zeros"
    return nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias, mode, device=device, dtype=dtype)


def _skeleton(method: str, layer: nn.Module, ranks, *, device=None, dtype=None) -> LowRankSequential:
    """The factorized layers of ``layer`` at ``ranks``, weights still to be filled (``device='meta'``: shapes only, for MACs)."""
    kw = {"device": device, "dtype": dtype}
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        r = ranks
        return LowRankSequential(nn.Linear(layer.in_features, r, bias=False, **kw), nn.Linear(r, layer.out_features, bias=has_bias, **kw),
                                 method="svd")
    cin, cout, (kh, kw_) = layer.in_channels, layer.out_channels, layer.kernel_size
    geo = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}
    if method == "svd":
        return LowRankSequential(_conv(cin, ranks, (kh, kw_), layer, **geo, **kw), _conv(ranks, cout, 1, bias=has_bias, **kw), method="svd")
    if method == "tucker2":
        r_out, r_in = ranks
        return LowRankSequential(_conv(cin, r_in, 1, **kw), _conv(r_in, r_out, (kh, kw_), layer, **geo, **kw),
                                 _conv(r_out, cout, 1, bias=has_bias, **kw), method="tucker2")
    if method == "cp":
        (sh, sw), (dh, dw), p = layer.stride, layer.dilation, layer.padding
        pad_v, pad_h = (p, p) if isinstance(p, str) else ((p[0], 0), (0, p[1]))  # 'same' / 'valid' act on each axis alike
        r = ranks
        return LowRankSequential(_conv(cin, r, 1, **kw),
                                 _conv(r, r, (kh, 1), layer, stride=(sh, 1), padding=pad_v, dilation=(dh, 1), groups=r, **kw),
                                 _conv(r, r, (1, kw_), layer, stride=(1, sw), padding=pad_h, dilation=(1, dw), groups=r, **kw),
                                 _conv(r, cout, 1, bias=has_bias, **kw), method="cp")
    raise ConfigError(f"unknown factorization {method!r}; use svd, tucker2 or cp")


def _fill(seq: nn.Sequential, layer: nn.Module, weights: list[torch.Tensor]) -> nn.Sequential:
    with torch.no_grad():
        for m, w in zip(seq, weights, strict=True):
            m.weight.copy_(w.reshape(m.weight.shape))
        if layer.bias is not None:
            seq[-1].bias.copy_(layer.bias.detach())
    return seq.train(layer.training)


def _new(method: str, layer: nn.Module, ranks, weights: list[torch.Tensor]) -> nn.Sequential:
    seq = _skeleton(method, layer, ranks, device=layer.weight.device, dtype=layer.weight.dtype)
    return _fill(seq, layer, weights)


# ----------------------------------------------------------------------------- SVD


def _svd_factors(mat: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U_r sqrt(S_r), sqrt(S_r) V_r^T)`` of a float64 matrix."""
    with _few_threads(_svd_work(mat)):
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Truncated SVD of a Linear layer: ``W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``.

    Math: ``W = U S V^T`` (``out x in``); the best rank-``r`` approximation in Frobenius norm keeps
    the ``r`` largest singular values (Eckart-Young): ``||W - W_r||_F^2 = sum_{i>=r} s_i^2``.
    MACs per row drop from ``in * out`` to ``r (in + out)``.

    Args:
        layer: the ``nn.Linear`` (not modified).
        rank: ``1 <= r <= min(in, out)``; ``min(in, out)`` is exact.

    Returns:
        ``nn.Sequential(Linear(in, r, bias=False), Linear(r, out, bias=layer.bias is not None))``.

    Raises:
        ConfigError: rank out of range (the message gives the maximum).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> fc = nn.Linear(6, 4)
        >>> seq = svd_linear(fc, 4)
        >>> x = torch.randn(3, 6)
        >>> torch.allclose(seq(x), fc(x), atol=1e-5), [tuple(m.weight.shape) for m in seq]
        (True, [(4, 6), (4, 4)])
    """
    if not isinstance(layer, nn.Linear):
        raise UnsupportedError(f"svd_linear decomposes an nn.Linear, got {type(layer).__name__} (use svd_conv for convs)")
    _check_rank("rank", rank, svd_max_rank(layer), _describe(layer), "min(out_features, in_features)")
    second, first = _svd_factors(layer.weight.detach().double(), rank)
    return _new("svd", layer, rank, [first, second])


def svd_conv(layer: nn.Conv2d, rank: int) -> nn.Sequential:
    """Truncated SVD of a conv's ``(C_out, C_in k_h k_w)`` matricization: a k x k conv to ``r`` channels, then a 1x1.

    For a 1x1 conv this is :func:`svd_linear` applied per pixel: ``Conv1x1(C_in -> r)`` (with the
    layer's stride and padding) then ``Conv1x1(r -> C_out)`` with the bias. For ``k > 1`` the first
    layer is the k x k conv (Zhang et al. 2015's channel decomposition, without their data-driven fit).
    MACs per output pixel: ``C_in k_h k_w C_out -> r (C_in k_h k_w + C_out)``.

    Args:
        layer: a ``groups=1`` ``nn.Conv2d`` (not modified).
        rank: ``1 <= r <= min(C_out, C_in k_h k_w)``; the maximum is exact.

    Raises:
        UnsupportedError: grouped / depthwise conv.
        ConfigError: rank out of range.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> conv = nn.Conv2d(16, 8, 1, stride=2)
        >>> x = torch.randn(1, 16, 7, 7)
        >>> torch.allclose(svd_conv(conv, 8)(x), conv(x), atol=1e-5), [tuple(m.weight.shape) for m in svd_conv(conv, 3)]
        (True, [(3, 16, 1, 1), (8, 3, 1, 1)])
    """
    _check_conv(layer, "svd_conv")
    _check_rank("rank", rank, svd_max_rank(layer), _describe(layer), "min(C_out, C_in * k_h * k_w)")
    second, first = _svd_factors(_unfold(layer.weight.detach().double(), 0), rank)
    return _new("svd", layer, rank, [first, second])


# ----------------------------------------------------------------------------- Tucker-2


def _unfold(w: torch.Tensor, mode: int) -> torch.Tensor:
    return w.movedim(mode, 0).reshape(w.shape[mode], -1)


def _leading(mat: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r`` leading left singular vectors (orthonormal columns; beyond ``mat``'s rank, an orthonormal completion)."""
    u = torch.linalg.svd(mat, full_matrices=r > min(mat.shape))[0]
    return u[:, :r]


def tucker2_factors(weight: torch.Tensor, ranks: tuple[int, int], hooi_iters: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 of a conv weight over its channel modes: ``W ~ G x_0 U_out x_1 U_in``.

    Math: ``W[o, i, h, w] ~ sum_{p, q} U_out[o, p] G[p, q, h, w] U_in[i, q]`` with orthonormal
    ``U_out`` (``C_out x r_out``), ``U_in`` (``C_in x r_in``) and core ``G = W x_0 U_out^T x_1 U_in^T``.
    HOSVD initialization (leading left singular vectors of the unfoldings ``W_(0)``, ``W_(1)``), then
    ``hooi_iters`` HOOI sweeps (``U_out`` <- leading vectors of ``(W x_1 U_in^T)_(0)``, then ``U_in``
    alike), each of which can only lower the error. Full ranks are exact.

    Args:
        weight: ``(C_out, C_in, k_h, k_w)``.
        ranks: ``(r_out, r_in)`` with ``r_out <= C_out``, ``r_in <= C_in``.
        hooi_iters: refinement sweeps (0: HOSVD).

    Returns:
        ``(U_out, G, U_in)`` in float64.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> w = torch.einsum("op,pqhw,iq->oihw", torch.randn(6, 2), torch.randn(2, 3, 3, 3), torch.randn(5, 3))  # Tucker ranks (2, 3)
        >>> u_out, g, u_in = tucker2_factors(w, (2, 3))
        >>> torch.allclose(torch.einsum("op,pqhw,iq->oihw", u_out, g, u_in), w.double(), atol=1e-9), tuple(g.shape)
        (True, (2, 3, 3, 3))
    """
    w = weight.detach().double()
    r_out, r_in = ranks
    with _few_threads(_svd_work(w)):
        u_out, u_in = _leading(_unfold(w, 0), r_out), _leading(_unfold(w, 1), r_in)
        for _ in range(hooi_iters):
            u_out = _leading(_unfold(torch.einsum("oihw,iq->oqhw", w, u_in), 0), r_out)
            u_in = _leading(_unfold(torch.einsum("oihw,op->pihw", w, u_out), 1), r_in)
        core = torch.einsum("oihw,op,iq->pqhw", w, u_out, u_in)
    return u_out, core, u_in


def tucker2_conv(layer: nn.Conv2d, ranks: tuple[int, int], hooi_iters: int = 3) -> nn.Sequential:
    """Tucker-2 decomposition of a k x k conv (Kim et al. 2016): 1x1 down, k x k core, 1x1 up.

    Math: see :func:`tucker2_factors`. The layers are ``Conv1x1(C_in -> r_in)`` with weight ``U_in^T``,
    ``Conv(k_h x k_w, r_in -> r_out)`` with weight ``G`` and the layer's stride / padding / dilation,
    ``Conv1x1(r_out -> C_out)`` with weight ``U_out`` and the bias. MACs:
    ``H_in W_in C_in r_in + H_out W_out (r_in r_out k_h k_w + r_out C_out)``.

    Args:
        layer: a ``groups=1`` ``nn.Conv2d`` (not modified).
        ranks: ``(r_out, r_in)``, ``1 <= r_out <= C_out``, ``1 <= r_in <= C_in``; ``(C_out, C_in)`` is exact.
        hooi_iters: HOOI sweeps after the HOSVD initialization.

    Raises:
        UnsupportedError: grouped / depthwise conv (already cheap).
        ConfigError: a rank out of range (the message gives the maximum).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> seq = tucker2_conv(nn.Conv2d(16, 32, 3, stride=2, padding=1), (8, 4))
        >>> [tuple(m.weight.shape) for m in seq], seq[1].stride
        ([(4, 16, 1, 1), (8, 4, 3, 3), (32, 8, 1, 1)], (2, 2))
    """
    _check_conv(layer, "tucker2_conv")
    if not isinstance(ranks, list | tuple) or len(ranks) != 2:
        raise ConfigError(f"Tucker-2 ranks must be a pair (r_out, r_in), got {ranks!r}")
    where = _describe(layer)
    r_out = _check_rank("r_out", ranks[0], layer.out_channels, where, "r_out <= C_out")
    r_in = _check_rank("r_in", ranks[1], layer.in_channels, where, "r_in <= C_in")
    u_out, core, u_in = tucker2_factors(layer.weight, (r_out, r_in), hooi_iters)
    return _new("tucker2", layer, (r_out, r_in), [u_in.T, core, u_out])


# ----------------------------------------------------------------------------- CP


def _exact_cp(w: torch.Tensor) -> list[torch.Tensor]:
    """An exact CP of a 4-way tensor with ``prod(dims) / max(dims)`` terms: one per index of the other modes."""
    dims = tuple(w.shape)
    m = max(range(4), key=lambda j: dims[j])
    others = [j for j in range(4) if j != m]
    r = math.prod(dims[j] for j in others)
    factors: list[torch.Tensor] = [torch.empty(0)] * 4
    factors[m] = w.movedim(m, 0).reshape(dims[m], r)
    for j, idx in zip(others, torch.unravel_index(torch.arange(r), tuple(dims[j] for j in others)), strict=True):
        factors[j] = torch.nn.functional.one_hot(idx, dims[j]).T.to(w.dtype)
    return factors


def _balance(factors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rescale each term's vectors to equal norms (the product, hence the tensor, is unchanged)."""
    norms = torch.stack([f.norm(dim=0) for f in factors])  # (4, R)
    geo = norms.clamp_min(1e-300).log().mean(0).exp()
    return [f * torch.where(n > 0, geo / n.clamp_min(1e-300), torch.ones_like(n)) for f, n in zip(factors, norms, strict=True)]


def _mttkrp(w: torch.Tensor, factors: list[torch.Tensor], n: int) -> torch.Tensor:
    """``W_(n) (khatri-rao of the other factors)``: ``M[i_n, r] = sum W[i] prod_{k != n} F_k[i_k, r]``."""
    subs = "oihw"
    others = [k for k in range(4) if k != n]
    return torch.einsum("oihw," + ",".join(subs[k] + "r" for k in others) + "->" + subs[n] + "r", w, *(factors[k] for k in others))


def cp_factors(weight: torch.Tensor, rank: int, *, n_iter_max: int = 200, tol: float = 1e-8, seed: int = 0) -> list[torch.Tensor]:
    """Rank-``R`` CP decomposition of a 4-way conv weight: ``W ~ sum_r a_r o b_r o c_r o d_r``.

    Math: ``W[o, i, h, w] ~ sum_r A[o, r] B[i, r] C[h, r] D[w, r]``, fitted by alternating least squares:
    for each mode ``n`` in turn, ``F_n <- MTTKRP_n(W) (*_{k != n} F_k^T F_k)^+`` (``*``: Hadamard product),
    the exact least-squares update with the other factors fixed (Kolda & Bader 2009, the algorithm of
    ``tensorly.decomposition.parafac``, which the tests use as reference). Initialization: the leading
    left singular vectors of each unfolding (columns beyond a mode's size drawn from ``N(0, 1)`` with
    ``seed``: deterministic). Stops after ``n_iter_max`` sweeps or when the relative error
    ``||W - W_R||_F / ||W||_F`` changes by less than ``tol``. At ``R = prod(dims) / max(dims)``
    (:func:`cp_max_rank`) the exact decomposition is built directly. Each term's four vectors are
    finally rescaled to equal norms.

    Args:
        weight: ``(C_out, C_in, k_h, k_w)``.
        rank: ``R >= 1``.
        n_iter_max, tol: ALS sweep limit and stopping tolerance.
        seed: random state of the initialization's extra columns.

    Returns:
        ``[A (C_out x R), B (C_in x R), C (k_h x R), D (k_w x R)]`` in float64.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> fs = [torch.randn(n, 2) for n in (5, 4, 3, 3)]
        >>> w = torch.einsum("or,ir,hr,wr->oihw", *fs)            # CP rank 2
        >>> a, b, c, d = cp_factors(w, 2)
        >>> float((torch.einsum("or,ir,hr,wr->oihw", a, b, c, d) - w).norm() / w.norm()) < 1e-5
        True
    """
    w = weight.detach().double()
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"CP rank must be a positive integer, got {rank!r}")
    if rank >= math.prod(w.shape) // max(w.shape):
        return _balance(_exact_cp(w))
    with _few_threads(w.numel() * rank):
        return _balance(_cp_als(w, rank, n_iter_max, tol, seed))


def _solve_gram(gram: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``m gram^+`` for the symmetric PSD Hadamard product of Grams: Cholesky (cheap), pseudo-inverse when singular."""
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return torch.cholesky_solve(m.T, chol).T
    return m @ torch.linalg.pinv(gram, hermitian=True)


def _cp_als(w: torch.Tensor, rank: int, n_iter_max: int, tol: float, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    factors = []
    for n in range(4):
        u = torch.linalg.svd(_unfold(w, n), full_matrices=False)[0][:, :rank]
        extra = rank - u.shape[1]
        if extra > 0:
            u = torch.cat([u, torch.randn(w.shape[n], extra, generator=gen, dtype=w.dtype).to(w.device)], 1)
        factors.append(u)
    norm2 = float((w**2).sum())
    if norm2 == 0:
        return [torch.zeros_like(f) for f in factors]
    prev = math.inf
    for _ in range(n_iter_max):
        for n in range(4):
            gram = torch.ones(rank, rank, dtype=w.dtype, device=w.device)
            for k in range(4):
                if k != n:
                    gram = gram * (factors[k].T @ factors[k])
            m = _mttkrp(w, factors, n)
            factors[n] = _solve_gram(gram, m)
        # ||W - W_R||^2 = ||W||^2 - 2 <W, W_R> + ||W_R||^2, from the last mode's MTTKRP and Grams (no reconstruction)
        inner = float((factors[3] * m).sum())
        fit2 = float((gram * (factors[3].T @ factors[3])).sum())
        err = math.sqrt(max(norm2 - 2 * inner + fit2, 0.0) / norm2)
        if abs(prev - err) < tol:
            break
        prev = err
    return factors


def cp_conv(layer: nn.Conv2d, rank: int, *, n_iter_max: int = 200, tol: float = 1e-8, seed: int = 0) -> nn.Sequential:
    """CP decomposition of a k x k conv in Lebedev et al. (2015)'s four-layer form.

    Math: with ``W ~ sum_r A[:, r] o B[:, r] o C[:, r] o D[:, r]`` (:func:`cp_factors`),
    ``y = Conv1x1_A( DW_{1 x k}^D( DW_{k x 1}^C( Conv1x1_{B^T}(x) ) ) ) + bias``: ``Conv1x1(C_in -> R)``,
    depthwise ``k_h x 1`` (vertical stride / padding / dilation), depthwise ``1 x k_w`` (horizontal),
    ``Conv1x1(R -> C_out)`` with the bias. MACs:
    ``H_in W_in C_in R + H_out W_in R k_h + H_out W_out R (k_w + C_out)``.

    Args:
        layer: a ``groups=1`` ``nn.Conv2d`` (not modified).
        rank: ``1 <= R <= cp_max_rank(layer)``; the maximum is exact (built, not fitted).
        n_iter_max, tol, seed: ALS settings (see :func:`cp_factors`).

    Raises:
        UnsupportedError: grouped / depthwise conv.
        ConfigError: rank out of range (the message gives the maximum).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        >>> seq = cp_conv(conv, cp_max_rank(conv))           # exact
        >>> x = torch.randn(1, 3, 9, 9)
        >>> torch.allclose(seq(x), conv(x), atol=1e-5), seq[1].stride, seq[2].stride
        (True, (2, 1), (1, 2))
    """
    _check_conv(layer, "cp_conv")
    _check_rank("rank", rank, cp_max_rank(layer), _describe(layer),
                "CP max rank C_out*C_in*k_h*k_w / max(C_out, C_in, k_h, k_w), where an exact decomposition exists")
    return _cp_sequential(layer, cp_factors(layer.weight, rank, n_iter_max=n_iter_max, tol=tol, seed=seed))


def _cp_sequential(layer: nn.Conv2d, factors: list[torch.Tensor]) -> nn.Sequential:
    a, b, c, d = factors
    r = a.shape[1]
    return _new("cp", layer, r, [b.T, c.T, d.T, a])


# ----------------------------------------------------------------------------- reconstruction and cost


def reconstruct_weight(module: nn.Module) -> torch.Tensor:
    """The weight of the single Linear / Conv2d that a factorization computes (bias aside).

    Composes the layers of an ``nn.Sequential`` made by this module: Linear chains multiply;
    conv chains compose 1x1 layers by channel products, a dense k x k layer after 1x1 ones as a
    kernel product and a depthwise layer by broadcasting its kernel over the missing spatial axes.
    Works after fine-tuning too (it reads the current weights). A plain layer returns its weight.

    Raises:
        UnsupportedError: a layer chain this module does not produce.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> conv = nn.Conv2d(4, 6, 3)
        >>> torch.allclose(reconstruct_weight(tucker2_conv(conv, (6, 4))), conv.weight, atol=1e-6)
        True
    """
    if isinstance(module, nn.Linear | nn.Conv2d):
        return module.weight.detach()
    layers = list(module) if isinstance(module, nn.Sequential) else []
    if layers and all(isinstance(m, nn.Linear) for m in layers):
        w = layers[0].weight.detach()
        for m in layers[1:]:
            w = m.weight.detach() @ w
        return w
    if not layers or not all(isinstance(m, nn.Conv2d) for m in layers):
        raise UnsupportedError(f"cannot reconstruct a weight from {type(module).__name__}: expect a Linear / Conv2d or a "
                               "Sequential of Linear or Conv2d layers made by lowbit.algorithms.lowrank")
    k = layers[0].weight.detach()
    if layers[0].groups != 1:
        raise UnsupportedError("a factorization starts with a dense conv")
    for m in layers[1:]:
        w = m.weight.detach()
        one_by_one = w.shape[-2:] == (1, 1)
        if m.groups == 1 and one_by_one:
            k = torch.einsum("or,rihw->oihw", w[:, :, 0, 0], k)
        elif m.groups == 1 and k.shape[-2:] == (1, 1):
            k = torch.einsum("orhw,ri->oihw", w, k[:, :, 0, 0])
        elif m.groups == m.in_channels == m.out_channels and all(a == 1 or b == 1 for a, b in zip(w.shape[-2:], k.shape[-2:], strict=True)):
            k = k * w  # (R, C, kh, kw) * (R, 1, kh', kw'), each axis filled by one of them
        else:
            raise UnsupportedError(f"cannot compose {m} after a kernel of shape {tuple(k.shape)}")
    return k


def _out_shape(m: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(m, nn.Linear):
        return (*shape[:-1], m.out_features)
    _, h, w = shape
    if m.padding == "same":
        return (m.out_channels, h, w)
    pad = (0, 0) if m.padding == "valid" else m.padding
    hw = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip((h, w), m.kernel_size, m.stride, pad, m.dilation, strict=True)]
    return (m.out_channels, *hw)


def macs_of(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates per sample of a Linear / Conv2d or of a Sequential of them.

    Math: conv ``H_out W_out C_out (C_in / groups) k_h k_w``; Linear ``out * in`` per row (every leading
    dimension of the per-sample input is a row); a Sequential sums its layers, each on the shape the
    previous one produced.

    Args:
        module: ``nn.Linear``, ``nn.Conv2d`` or ``nn.Sequential`` of them (may live on the meta device).
        input_shape: the per-sample input shape (no batch): ``(C, H, W)`` for convs, ``(..., in)`` for Linear.

    Example:
        >>> macs_of(nn.Conv2d(3, 8, 3, stride=2, padding=1), (3, 28, 28))    # 14 * 14 * 8 * 3 * 9
        42336
        >>> macs_of(svd_linear(nn.Linear(100, 50), 10), (100,))              # 10 * (100 + 50)
        1500
    """
    shape = tuple(int(s) for s in input_shape)
    total = 0
    for m in (module if isinstance(module, nn.Sequential) else [module]):
        if not isinstance(m, nn.Linear | nn.Conv2d):
            raise UnsupportedError(f"macs_of counts Linear / Conv2d layers and Sequentials of them, got {type(m).__name__}")
        out = _out_shape(m, shape)
        total += math.prod(out) * m.weight[0].numel()
        shape = out
    return total

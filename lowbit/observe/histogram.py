"""Histogram observers: percentile, MSE-optimal, KL-divergence (entropy) and ACIQ clipping.

All of them stream a per-row histogram of ``bins`` (default 2048) equal-width bins over the
running range ``[lo, hi]``. When a batch widens the range, the old histogram is re-binned
onto the new edges by linear interpolation of its CDF, so memory is ``rows x bins`` however
much data is seen.

Range proposals (``p`` = normalized bin mass, ``c`` = bin centres):

* **percentile** — ``lo = F^-1(1 - q)``, ``hi = F^-1(q)`` (of ``|x|`` for symmetric mappings).
* **MSE** — among candidate ranges ``alpha * [lo, hi]``, ``alpha`` in a grid over (0, 1], pick the one
  minimising ``sum_k p_k (c_k - fq(c_k))^2``.
* **entropy** — TensorRT's KL calibration: for each threshold ``t`` (a bin edge), fold the mass
  beyond ``t`` into the last bin (distribution P), merge the bins below ``t`` into as many
  chunks as the grid has levels (Q, spread evenly over non-empty bins) and pick the ``t``
  minimising ``KL(P || Q)``. With 2048 bins the search is fine enough to differ from min-max
  (ONNX Runtime's 128-bin default cannot).
* **ACIQ** (Banner et al. 2019) — fit a Laplace (``b = E|x - mu|``) or Gaussian (``sigma``) prior and
  choose ``alpha`` minimising clipping noise + rounding noise, e.g. for Laplace with ``2^M`` levels
  ``2 b^2 e^{-alpha/b} + alpha^2 / (3 * 4^M)``; the range is ``mu +- alpha`` (``[0, alpha]`` for
  non-negative data, with the one-sided noise terms).

Example:
    >>> import torch
    >>> from lowbit.quant import IntFormat, Symmetric
    >>> torch.manual_seed(0) and None
    >>> ob = PercentileObserver(percentile=99.0)
    >>> ob.update(torch.randn(100_000))
    >>> lo, hi = ob.compute_range(IntFormat(bits=8), Symmetric())
    >>> round(hi.item(), 1)   # 99th percentile of |N(0,1)| is 2.58
    2.6
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..quant import IntFormat, PerTensor, Symmetric
from ..quant.affine import choose_qparams
from ..quant.granularity import Granularity
from .base import Observer


def _interp(xq: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Row-wise linear interpolation (like ``numpy.interp``) for 2-D ``xq (R,K)``, ``xp, fp (R,N)``."""
    n = xp.shape[1]
    idx = torch.searchsorted(xp.contiguous(), xq.contiguous(), right=True).clamp(1, n - 1)
    x0, x1 = xp.gather(1, idx - 1), xp.gather(1, idx)
    f0, f1 = fp.gather(1, idx - 1), fp.gather(1, idx)
    w = ((xq - x0) / (x1 - x0).clamp_min(1e-30)).clamp(0, 1)
    out = f0 + w * (f1 - f0)
    out = torch.where(xq <= xp[:, :1], fp[:, :1].expand_as(out), out)
    return torch.where(xq >= xp[:, -1:], fp[:, -1:].expand_as(out), out)


class HistogramObserver(Observer):
    """Streams a fixed-size per-row histogram; subclasses choose the range from it."""

    name = "histogram"

    def __init__(self, granularity: Granularity = PerTensor(), bins: int = 2048) -> None:
        super().__init__(granularity)
        if not isinstance(bins, int) or bins < 16:
            raise ConfigError(f"bins must be an integer >= 16, got {bins!r}")
        self.bins = bins
        self.hist: torch.Tensor | None = None  # (R, bins) float64
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    # -- streaming -------------------------------------------------------------------------
    def edges(self) -> torch.Tensor:
        """Bin edges ``(R, bins + 1)``."""
        t = torch.linspace(0, 1, self.bins + 1, dtype=torch.float64)
        return self.lo[:, None] + (self.hi - self.lo)[:, None] * t[None, :]

    def cdf_at(self, points: torch.Tensor) -> torch.Tensor:
        """Mass below each point, ``(R, K)``, interpolating linearly inside bins."""
        cum = torch.cat([torch.zeros_like(self.hist[:, :1]), self.hist.cumsum(1)], dim=1)
        return _interp(points, self.edges(), cum)

    def fix_range(self, lo: torch.Tensor, hi: torch.Tensor, param_shape: tuple[int, ...]) -> None:
        """Start an empty histogram on the known range ``[lo, hi]`` (per row, e.g. all-reduced over the
        ranks of a sharded calibration) so no batch inside it re-bins: the counts then depend only on the
        values seen, not their order, and histograms of shards sum to the histogram of the whole set.

        >>> ob = HistogramObserver(bins=16)
        >>> ob.fix_range(torch.tensor([-1.0]), torch.tensor([1.0]), ())
        >>> ob.update(torch.tensor([-1.0, 0.0, 0.99])); ob.hist.sum().item(), ob.hist[0, 8].item()
        (3.0, 1.0)
        """
        lo, hi = lo.reshape(-1).double(), hi.reshape(-1).double()
        if lo.shape != hi.shape or not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()) or bool((lo > hi).any()):
            raise ConfigError(f"fix_range needs finite lo <= hi of one shape, got lo {lo.tolist()[:4]}, hi {hi.tolist()[:4]}")
        if lo.numel() != max(1, math.prod(param_shape)):
            raise ConfigError(f"fix_range: {lo.numel()} ranges for param shape {tuple(param_shape)}")
        self._set_range(lo, hi)
        self.param_shape = tuple(param_shape)
        self.num_batches = 0

    def _set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        same = hi <= lo
        # a constant row gets a tiny non-empty range so bins have positive width
        pad = torch.where(lo.abs() > 0, lo.abs() * 1e-6, torch.full_like(lo, 1e-8))
        self.lo = torch.where(same, lo - pad, lo)
        self.hi = torch.where(same, hi + pad, hi)
        self.hist = torch.zeros(lo.shape[0], self.bins, dtype=torch.float64)

    def _update(self, xv: torch.Tensor) -> None:
        blo, bhi = (t.double() for t in torch.aminmax(xv, dim=1))
        if self.hist is None:
            self._set_range(blo, bhi)
        elif bool((blo < self.lo).any() or (bhi > self.hi).any()):
            new_lo, new_hi = torch.minimum(self.lo, blo), torch.maximum(self.hi, bhi)
            t = torch.linspace(0, 1, self.bins + 1, dtype=torch.float64)
            new_edges = new_lo[:, None] + (new_hi - new_lo)[:, None] * t[None, :]
            self.hist = self.cdf_at(new_edges).diff(dim=1).clamp_min(0)
            self.lo, self.hi = new_lo, new_hi
        rows = self.hist.shape[0]
        if rows == 1:  # per-tensor: torch.histc is a fast single pass in C++
            lo, hi = float(self.lo[0]), float(self.hi[0])
            h = torch.histc(xv.reshape(-1).float(), bins=self.bins, min=lo, max=hi)
            self.hist[0] += h.double()
            return
        x = xv.double()
        width = (self.hi - self.lo)[:, None]
        idx = ((x - self.lo[:, None]) / width * self.bins).floor().clamp(0, self.bins - 1).long()
        flat = (idx + torch.arange(rows)[:, None] * self.bins).reshape(-1)
        self.hist += torch.bincount(flat, minlength=rows * self.bins).reshape(rows, self.bins).double()

    # -- views of the distribution -----------------------------------------------------------
    def centers_and_mass(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin centres and normalized mass, both ``(R, bins)``."""
        e = self.edges()
        mass = self.hist / self.hist.sum(1, keepdim=True).clamp_min(1e-30)
        return 0.5 * (e[:, 1:] + e[:, :-1]), mass

    def abs_histogram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Histogram of ``|x|`` on ``bins`` bins over ``[0, max|x|]``: edges ``(R, bins+1)``, mass ``(R, bins)``."""
        amax = torch.maximum(self.lo.abs(), self.hi.abs())
        t = torch.linspace(0, 1, self.bins + 1, dtype=torch.float64)
        e = amax[:, None] * t[None, :]
        cdf_abs = self.cdf_at(e) - self.cdf_at(-e)
        mass = cdf_abs.diff(dim=1).clamp_min(0)
        return e, mass / mass.sum(1, keepdim=True).clamp_min(1e-30)

    def _finish(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.maximum(lo, self.lo).float()
        hi = torch.minimum(hi, self.hi).float()
        return self._shape(lo), self._shape(hi)


class PercentileObserver(HistogramObserver):
    """Clip at the ``percentile``-th percentile (two-sided; of ``|x|`` for symmetric mappings)."""

    name = "percentile"

    def __init__(self, granularity: Granularity = PerTensor(), percentile: float = 99.99, bins: int = 2048) -> None:
        super().__init__(granularity, bins)
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def _quantile(self, edges: torch.Tensor, mass: torch.Tensor, q: float) -> torch.Tensor:
        cum = torch.cat([torch.zeros_like(mass[:, :1]), mass.cumsum(1)], 1)
        cum = cum / cum[:, -1:].clamp_min(1e-30)
        target = torch.full((mass.shape[0], 1), q, dtype=torch.float64)
        # invert the CDF: interpolate edges over cumulative mass (non-decreasing)
        idx = torch.searchsorted(cum.contiguous(), target, right=False).clamp(1, cum.shape[1] - 1)
        c0, c1 = cum.gather(1, idx - 1), cum.gather(1, idx)
        e0, e1 = edges.gather(1, idx - 1), edges.gather(1, idx)
        w = ((target - c0) / (c1 - c0).clamp_min(1e-30)).clamp(0, 1)
        return (e0 + w * (e1 - e0))[:, 0]

    def compute_range(self, fmt, mapping):
        self._check_ready()
        q = self.percentile / 100.0
        if isinstance(mapping, Symmetric):
            e, m = self.abs_histogram()
            a = self._quantile(e, m, q)
            return self._finish(-a, a)
        e = self.edges()
        m = self.hist / self.hist.sum(1, keepdim=True)
        return self._finish(self._quantile(e, m, 1 - q), self._quantile(e, m, q))


def _fq_error(centers, mass, lo, hi, fmt: IntFormat, mapping) -> torch.Tensor:
    """Expected squared error ``sum p (c - fq(c))^2`` per row for ranges ``[lo, hi]`` (R,)."""
    s, z = choose_qparams(lo.float(), hi.float(), fmt, mapping)
    s, z = s.double()[:, None], z.double()[:, None]
    q = torch.clamp(torch.round(centers / s) + z, fmt.qmin, fmt.qmax)
    return (mass * (centers - (q - z) * s) ** 2).sum(1)


class MSEObserver(HistogramObserver):
    """Grid search of the clip ratio ``alpha`` minimising expected quantization MSE."""

    name = "mse"

    def __init__(self, granularity: Granularity = PerTensor(), grid: int = 100, min_ratio: float = 0.2, bins: int = 2048) -> None:
        super().__init__(granularity, bins)
        if grid < 2 or not 0 < min_ratio < 1:
            raise ConfigError(f"MSE search needs grid >= 2 and 0 < min_ratio < 1, got grid={grid}, min_ratio={min_ratio}")
        self.grid, self.min_ratio = grid, min_ratio

    def compute_range(self, fmt, mapping):
        self._check_ready()
        centers, mass = self.centers_and_mass()
        lo0, hi0 = torch.clamp(self.lo, max=0), torch.clamp(self.hi, min=0)
        if isinstance(mapping, Symmetric):
            a = torch.maximum(-lo0, hi0)
            lo0, hi0 = -a, a
        best_err = torch.full_like(lo0, float("inf"))
        best_lo, best_hi = lo0.clone(), hi0.clone()
        for alpha in torch.linspace(1.0, self.min_ratio, self.grid, dtype=torch.float64):
            lo, hi = lo0 * alpha, hi0 * alpha
            err = _fq_error(centers, mass, lo, hi, fmt, mapping)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return self._finish(best_lo, best_hi)


def kl_divergences(mass: torch.Tensor, windows: torch.Tensor, levels: int) -> torch.Tensor:
    """``KL(P || Q)`` for each clipping window ``[a, b)`` of bins (TensorRT's construction, generalized).

    P: the histogram restricted to the window, mass left of ``a`` folded into bin ``a`` and mass
    right of ``b`` into bin ``b - 1``. Q: the window's bins merged into ``levels`` chunks, each
    chunk's mass spread evenly over its non-empty bins. Vectorized over ``windows (n, 2)``.
    """
    nb = mass.shape[0]
    hist = mass / mass.sum()
    a, b = windows[:, 0], windows[:, 1]
    n = windows.shape[0]
    k = torch.arange(nb)
    j = torch.arange(levels + 1)
    width = (b - a).clamp_min(1)
    bounds = a[:, None] + torch.div(j[None, :] * width[:, None], levels, rounding_mode="floor")  # (n, L+1)
    cum = torch.cat([torch.zeros(1, dtype=hist.dtype), hist.cumsum(0)])
    nz = (hist > 0).to(hist.dtype)
    cum_nz = torch.cat([torch.zeros(1, dtype=hist.dtype), nz.cumsum(0)])
    chunk_sum = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]
    chunk_nnz = cum_nz[bounds[:, 1:]] - cum_nz[bounds[:, :-1]]
    chunk_of = (torch.searchsorted(bounds.contiguous(), k[None, :].expand(n, nb).contiguous(), right=True) - 1).clamp(0, levels - 1)
    inside = (k[None, :] >= a[:, None]) & (k[None, :] < b[:, None])
    per_bin = (chunk_sum / chunk_nnz.clamp_min(1)).gather(1, chunk_of)
    zero = torch.zeros((), dtype=hist.dtype)
    q = torch.where(inside & (nz[None, :] > 0), per_bin, zero)
    p = torch.where(inside, hist[None, :].expand(n, nb), zero)
    p = p.scatter_add(1, a[:, None], cum[a][:, None])  # left tail
    p = p.scatter_add(1, (b - 1)[:, None], (cum[-1] - cum[b])[:, None])  # right tail
    p = p / p.sum(1, keepdim=True)
    q = q / q.sum(1, keepdim=True).clamp_min(1e-30)
    q = torch.where((p > 0) & (q <= 0), torch.full_like(q, 1e-10), q)
    return torch.where(p > 0, p * (p.clamp_min(1e-30).log() - q.clamp_min(1e-30).log()), zero).sum(1)


class EntropyObserver(HistogramObserver):
    """KL-divergence (entropy) calibration over a 2048-bin histogram (TensorRT's method).

    * symmetric mapping: thresholds ``t`` on the ``|x|`` histogram, range ``[-t, t]``, ``levels / 2``
      chunks for a signed grid;
    * affine mapping, non-negative data (after ReLU): thresholds ``[0, t]`` with all ``levels``; the
      bin holding exact zeros is left out of the search, since 0 is exactly on the grid (otherwise
      the ReLU spike at 0 drives the threshold far too low);
    * affine mapping, signed data: windows ``alpha * [lo, hi]`` for ``alpha`` on a grid in (0, 1].
    """

    name = "entropy"

    def __init__(self, granularity: Granularity = PerTensor(), bins: int = 2048, min_ratio: float = 0.05, grid: int = 200) -> None:
        super().__init__(granularity, bins)
        self.min_ratio, self.grid = min_ratio, grid

    def compute_range(self, fmt, mapping):
        self._check_ready()
        los, his = [], []
        symmetric = isinstance(mapping, Symmetric)
        abs_edges, abs_mass = self.abs_histogram() if symmetric else (None, None)
        edges = self.edges()
        for r in range(self.hist.shape[0]):
            lo, hi = float(self.lo[r]), float(self.hi[r])
            if symmetric:
                levels = max(1, fmt.levels // 2) if fmt.signed else fmt.levels
                m = abs_mass[r]
                i = self._best_prefix(m, levels)
                t = abs_edges[r, i]
                los.append(-t)
                his.append(t)
            elif lo >= 0:
                m = self.hist[r].clone()
                m[0] = 0  # exact zeros (ReLU) are representable: keep them out of the KL search
                i = self._best_prefix(m, fmt.levels)
                los.append(edges[r, 0])
                his.append(edges[r, i])
            else:
                alphas = torch.linspace(1.0, self.min_ratio, self.grid, dtype=torch.float64)
                w = (hi - lo) / self.bins
                a = ((alphas * lo - lo) / w).floor().long().clamp(0, self.bins - 1)
                b = ((alphas * hi - lo) / w).ceil().long().clamp(1, self.bins)
                b = torch.maximum(b, a + 1)
                kl = kl_divergences(self.hist[r], torch.stack([a, b], 1), fmt.levels)
                best = int(kl.argmin())
                los.append(edges[r, a[best]])
                his.append(edges[r, b[best]])
        return self._finish(torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in los]),
                            torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in his]))

    @staticmethod
    def _best_prefix(mass: torch.Tensor, levels: int) -> int:
        nb = mass.shape[0]
        if levels >= nb or float(mass.sum()) <= 0:
            return nb
        # thresholds every `step` bins (<= 256 candidates): 2048-bin resolution of the histogram itself,
        # a search grid 8x finer than ONNX Runtime's 128-bin histogram
        step = max(1, (nb - levels) // 256)
        ends = torch.unique(torch.cat([torch.arange(levels, nb + 1, step), torch.tensor([nb])]))
        kl = kl_divergences(mass, torch.stack([torch.zeros_like(ends), ends], 1), levels)
        return int(ends[kl.argmin()])


def _norm_q(a: float) -> float:
    return 0.5 * math.erfc(a / math.sqrt(2))


def _norm_pdf(a: float) -> float:
    return math.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)


def aciq_alpha(scale: float, levels: int, prior: str = "laplace", one_sided: bool = False) -> float:
    """Optimal clip ``alpha`` for a Laplace(b=scale) / Gaussian(sigma=scale) prior and ``levels`` grid points.

    Minimises ``clip_noise(alpha) + alpha^2 / (3 * levels^2)`` (two-sided, range ``2 alpha``) or
    ``one_sided_clip_noise(alpha) + alpha^2 / (12 * levels^2)`` (range ``[0, alpha]``).

    Example:
        >>> round(aciq_alpha(1.0, 2 ** 4, "laplace") , 2)   # Banner et al.: 5.03 b at 4 bits
        5.03
        >>> round(aciq_alpha(1.0, 2 ** 4, "gaussian"), 2)   # paper (rounded): 2.55 sigma at 4 bits
        2.56
    """
    from scipy.optimize import minimize_scalar

    if scale <= 0:
        return 0.0
    if prior not in ("laplace", "gaussian"):
        raise ConfigError(f"ACIQ prior must be 'laplace' or 'gaussian', got {prior!r}")

    def clip_noise(a: float) -> float:
        # Two tails of Laplace(b) or one tail of the half-Laplace (density doubled) give the same
        # total: 2 b^2 e^{-a/b}; likewise 2 sigma^2 [(1 + t^2) Q(t) - t phi(t)] for the Gaussian.
        if prior == "laplace":
            return 2 * scale**2 * math.exp(-a / scale)
        t = a / scale
        return 2 * scale**2 * ((1 + t * t) * _norm_q(t) - t * _norm_pdf(t))

    quant = (lambda a: a * a / (12 * levels**2)) if one_sided else (lambda a: a * a / (3 * levels**2))
    res = minimize_scalar(lambda a: clip_noise(a) + quant(a), bounds=(1e-9 * scale, 60 * scale), method="bounded",
                          options={"xatol": 1e-9 * scale})
    return float(res.x)


class ACIQObserver(HistogramObserver):
    """Analytic clipping (ACIQ) from the histogram's mean and spread under a Laplace or Gaussian prior."""

    name = "aciq"

    def __init__(self, granularity: Granularity = PerTensor(), prior: str = "laplace", bins: int = 2048) -> None:
        super().__init__(granularity, bins)
        if prior not in ("laplace", "gaussian"):
            raise ConfigError(f"ACIQ prior must be 'laplace' or 'gaussian', got {prior!r}")
        self.prior = prior

    def compute_range(self, fmt, mapping):
        self._check_ready()
        centers, mass = self.centers_and_mass()
        los, his = [], []
        for r in range(centers.shape[0]):
            c, p = centers[r], mass[r]
            if float(self.lo[r]) >= 0:  # non-negative data (after ReLU): one-sided prior at 0
                # half-Laplace mean = b; half-normal E[x^2] = sigma^2
                scale = float((p * c).sum()) if self.prior == "laplace" else math.sqrt(float((p * c * c).sum()))
                a = aciq_alpha(scale, fmt.levels, self.prior, one_sided=True)
                los.append(0.0)
                his.append(a)
                continue
            mu = float((p * c).sum())
            scale = float((p * (c - mu).abs()).sum()) if self.prior == "laplace" else math.sqrt(float((p * (c - mu) ** 2).sum()))
            a = aciq_alpha(scale, fmt.levels, self.prior)
            if isinstance(mapping, Symmetric):
                m = abs(mu) + a
                los.append(-m)
                his.append(m)
            else:
                los.append(mu - a)
                his.append(mu + a)
        t = torch.tensor
        return self._finish(t(los, dtype=torch.float64), t(his, dtype=torch.float64))


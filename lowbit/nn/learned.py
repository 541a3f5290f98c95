"""Trainable fake-quantizers for quantization-aware training: LSQ, PACT, DoReFa, DSQ, plain STE.

QAT (:class:`lowbit.algorithms.qat.QATConfig`) swaps the calibrated ``WeightQuant`` / ``ActQuant``
of a PTQ-prepared model for these modules; training then updates the float master weights *and*
the quantizers' own parameters; ``convert`` freezes every one back into a plain
``WeightQuant`` / ``ActQuant`` with pinned ``(S, Z)`` (bit-exact, see :meth:`LearnedQuant.frozen_grid`),
so export, the packed format and the integer engine need nothing new.

All of them compute, in the forward pass, exactly the integer-grid value a deployed model
computes (``S * (clamp(round(x / S) + Z, qmin, qmax) - Z)``, the formula of
:func:`lowbit.quant.fake_quantize`); they differ in what is learned and in the gradient:

* **STE** (``ste``): fixed ``(S, Z)`` from calibration; ``dy/dx = 1`` inside the grid, 0 outside.
* **LSQ** (Esser et al. 2020; ``lsq``): ``S`` is a parameter. With ``v = x / S``::

      dy/dS = round(v) - v        inside the grid       (the rounding error)
              qmin - Z or qmax - Z where clamped

  and the gradient reaching ``S`` is multiplied by ``g = 1 / sqrt(N * qmax)`` (``N`` = elements
  per scale: weights per output channel, or activation elements per batch) so the step of ``S``
  is commensurate with the steps of the values it quantizes. ``S`` is initialized from the
  calibrated PTQ scale (MSE / min-max), not from the paper's ``2 <|x|> / sqrt(qmax)``: the
  starting point is then the PTQ model's accuracy.
* **PACT** (Choi et al. 2018; ``pact``, activations with a non-negative range): the clipping level
  ``alpha`` is a parameter; ``y = clamp(x, 0, alpha)``, ``S = alpha / qmax``, ``Z = 0``, and the
  quantization is straight-through: ``dy/dalpha = 1[x >= alpha]``, ``dy/dx = 1[0 <= x < alpha]``.
  ``alpha`` takes L2 decay ``pact_decay * alpha^2`` (:meth:`regularization`).
* **DoReFa** (Zhou et al. 2016; ``dorefa``). Weights:
  ``w_n = tanh(W) / (2 max|tanh W|) + 1/2``, ``w_k = round(w_n (2^k - 1)) / (2^k - 1)``,
  ``W_q = c (2 w_k - 1)``, straight-through round. The original has ``c = 1`` (networks trained
  from scratch with BatchNorm after every layer); here ``c = max|tanh W|`` (not differentiated) so a
  pretrained layer whose BatchNorm is folded keeps its output scale. The ``2^k`` levels are the
  odd multiples of ``c / (2^k - 1)`` (no zero level), so their integer form needs ``k + 1`` signed
  bits: a converted 2-bit DoReFa layer is stored on the 3-bit grid (codes -3, -1, 1, 3).
  Activations: ``clamp(x, 0, r)`` quantized uniformly to ``k`` bits, straight-through; the
  original's ``r = 1`` assumes activations in [0, 1], so ``r`` is the calibrated range here (fixed).
* **DSQ** (Gong et al. 2019; ``dsq``): the forward value is the hard grid value; the backward
  pass differentiates a soft staircase instead of the straight-through identity. In grid units
  ``t = x / S + Z``, ``i = floor(t)``, ``f = t - i - 1/2``::

      soft(t) = i + 1/2 + tanh(k f) / (2 tanh(k / 2)),     k = log(2 / alpha - 1)

  so ``d soft / dt = k sech^2(k f) / (2 tanh(k/2))``: close to 1 everywhere for a large ``alpha``
  (the STE), concentrated in the middle between levels as ``alpha -> 0`` (the hard staircase).
  ``alpha`` anneals geometrically from ``dsq_alpha[0]`` to ``dsq_alpha[1]`` over training
  (:meth:`set_progress`, called by :func:`lowbit.train`). ``S`` is learned as in LSQ.

Stochastic rounding (a spec with ``rounding: stochastic``) is used while training
(``floor(v + u)``, ``u ~ U[0, 1)``); evaluation and the converted model round to nearest.

Example:
    >>> import torch
    >>> from lowbit.config import QuantSpec
    >>> spec = QuantSpec.from_dict({"bits": 4, "granularity": "per_channel"})
    >>> w = torch.randn(8, 16)
    >>> q = LSQQuant(spec, scale=w.abs().amax(1) / 7, zero_point=torch.zeros(8, dtype=torch.int32), is_weight=True)
    >>> y = q(w); y.sum().backward()
    >>> q.scale.grad.shape, bool((y / q.scale.detach()[:, None]).round().abs().max() <= 8)
    (torch.Size([8]), True)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import QuantSpec
from ..errors import ConfigError
from ..quant import PerChannel, PerTensor
from ..quant.affine import _rows


def _round(v: torch.Tensor, stochastic: bool) -> torch.Tensor:
    if stochastic:
        return torch.floor(v + torch.rand_like(v))
    return torch.round(v)


# Straight-through tricks written as ``value.detach() + (t - t.detach())``: the added term is exactly
# 0.0 in floating point, so the forward value is bit-identical to the plain formula (the converted
# model reproduces the trained one exactly), while the gradient is the one of ``t``.


def _ste_round(v: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """Round with an identity gradient."""
    return _round(v.detach(), stochastic) + (v - v.detach())


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Value ``x``, gradient multiplied by ``g``."""
    return x.detach() + (x * g - (x * g).detach())


class _FakeQuantSTE(torch.autograd.Function):
    """``y = (clamp(round(x / s) + z, qmin, qmax) - z) s`` in one autograd node (the same ops, in the
    same order, as the unfused formula: bit-identical values). Backward: ``dy/dx = 1`` where
    ``round(x/s) + z`` lies in ``[qmin, qmax]`` (the clamp's own rule), else 0; LSQ's
    ``dy/ds = (v - z) - 1[inside] x / s``, summed to ``s``'s shape and multiplied by ``g``.
    One node instead of ~10 keeps QAT's autograd overhead near that of the float network."""

    @staticmethod
    def forward(ctx, x, s, z, qmin, qmax, g, stochastic):  # noqa: D102
        xs = x / s
        r = _round(xs, stochastic) + z
        v = torch.clamp(r, qmin, qmax)
        inside = (r >= qmin) & (r <= qmax)
        ctx.save_for_backward(xs, v, inside, s, z)
        ctx.g = g
        return (v - z) * s

    @staticmethod
    def backward(ctx, gy):  # noqa: D102
        xs, v, inside, s, z = ctx.saved_tensors
        gx = gy * inside if ctx.needs_input_grad[0] else None
        gs = None
        if ctx.needs_input_grad[1]:
            gs = (gy * torch.where(inside, v - z - xs, v - z)).sum_to_size(s.shape) * ctx.g
        return gx, gs, None, None, None, None, None


class LearnedQuant(nn.Module):
    """Base of the trainable quantizers: an integer grid ``(spec.format, S, Z)``, views by granularity.

    Subclasses implement :meth:`forward` and keep ``scale`` / ``zero_point`` current; :meth:`frozen_grid`
    gives the fixed grid a converted model uses. ``regularization()`` adds to the training loss;
    ``set_progress(p)`` (p in [0, 1]) lets a quantizer follow the training schedule.
    """

    method = "ste"

    is_weight = False

    def __init__(self, spec: QuantSpec, scale: torch.Tensor, zero_point: torch.Tensor, *, is_weight: bool = False) -> None:
        super().__init__()
        self.is_weight = is_weight
        if not isinstance(spec.granularity, PerTensor | PerChannel):
            raise ConfigError(f"QAT quantizers support per_tensor and per_channel granularity, got {spec.granularity.name}")
        self.spec = spec
        self.register_buffer("zero_point", torch.as_tensor(zero_point).to(torch.int32).clone())
        self._init_scale(torch.as_tensor(scale, dtype=torch.float32).detach().clone())

    def _init_scale(self, scale: torch.Tensor) -> None:
        self.register_buffer("scale", scale)

    @property
    def stochastic(self) -> bool:
        return self.training and self.spec.rounding == "stochastic"

    def _view(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xv = self.spec.granularity.view(x)
        s = _rows(scale.to(x.dtype), xv.shape[0])
        z = _rows(self.zero_point, xv.shape[0]).to(x.dtype)
        return xv, s, z

    def _grid(self, x: torch.Tensor, scale: torch.Tensor, g: float = 1.0) -> torch.Tensor:
        """``S (clamp(round(x/S) + Z) - Z)``: straight-through round, clamp gradient 0 outside; the
        gradient reaching ``scale`` is multiplied by ``g`` (LSQ's gradient scale)."""
        fmt = self.spec.format
        if type(self)._round_fn is LearnedQuant._round_fn:  # plain STE rounding: the fused node
            xv, s, z = self._view(x, scale)
            y = _FakeQuantSTE.apply(xv, s, z, fmt.qmin, fmt.qmax, g, self.stochastic)
            return self.spec.granularity.unview(y, x.shape)
        xv, s, z = self._view(x, _grad_scale(scale, g) if g != 1.0 else scale)
        v = torch.clamp(self._round_fn(xv / s) + z, fmt.qmin, fmt.qmax)
        return self.spec.granularity.unview((v - z) * s, x.shape)

    def _round_fn(self, v: torch.Tensor) -> torch.Tensor:
        return _ste_round(v, self.stochastic)

    def current_scale(self) -> torch.Tensor:
        return self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x):
            return x
        return self._grid(x, self.current_scale())

    def qparams(self, w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Current ``(S, Z)`` (detached), as ``WeightQuant.qparams`` / ``ActQuant`` buffers give them."""
        return self.current_scale().detach().clone(), self.zero_point.clone()

    def frozen_grid(self, x: torch.Tensor | None = None) -> tuple[QuantSpec, torch.Tensor, torch.Tensor]:
        """``(spec, S, Z)`` of the fixed grid the converted model uses: ``fake_quantize(self(x), S, Z) == self(x)``."""
        s, z = self.qparams(x)
        return self.spec.replace(rounding="nearest_even"), s, z

    def regularization(self) -> torch.Tensor | None:
        return None

    def set_progress(self, p: float) -> None:  # noqa: B027 - optional hook
        """Training progress in [0, 1] (only DSQ uses it)."""

    def extra_repr(self) -> str:
        return f"{self.method}, {self.spec.describe()}"


class STEQuant(LearnedQuant):
    """Fixed calibrated grid, straight-through gradient (the classic QAT fake-quant)."""

    method = "ste"


class LSQQuant(LearnedQuant):
    """Learned step size (see module docstring)."""

    method = "lsq"

    def _init_scale(self, scale: torch.Tensor) -> None:
        self.scale = nn.Parameter(scale)

    def current_scale(self) -> torch.Tensor:
        return self.scale.abs().clamp_min(1e-8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x):
            return x
        # N: weights per scale; for activations, elements per sample and scale (the loss is a batch mean)
        per_sample = x.numel() if self.is_weight or x.ndim == 0 else x.numel() / x.shape[0]
        g = 1.0 / math.sqrt(max(1.0, per_sample / self.scale.numel()) * max(1, self.spec.format.qmax))
        return self._grid(x, self.current_scale(), g)


class DSQQuant(LSQQuant):
    """Differentiable soft quantization: hard forward, soft-staircase backward (see module docstring)."""

    method = "dsq"

    def __init__(self, spec: QuantSpec, scale: torch.Tensor, zero_point: torch.Tensor, *, is_weight: bool = False,
                 alpha: tuple[float, float] = (0.2, 0.01)) -> None:
        super().__init__(spec, scale, zero_point, is_weight=is_weight)
        self.alpha_range = (float(alpha[0]), float(alpha[1]))
        self.alpha = self.alpha_range[0]

    def set_progress(self, p: float) -> None:
        a0, a1 = self.alpha_range
        self.alpha = a0 * (a1 / a0) ** min(max(p, 0.0), 1.0)

    def _round_fn(self, v: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return _ste_round(v, False)
        k = math.log(2.0 / self.alpha - 1.0)
        i = torch.floor(v.detach())
        soft = i + 0.5 + torch.tanh(k * (v - i - 0.5)) / (2.0 * math.tanh(k / 2.0))
        return _round(v.detach(), self.stochastic) + (soft - soft.detach())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha:.3g}"


class PACTQuant(LearnedQuant):
    """Learned activation clipping level ``alpha`` (unsigned grid with ``Z = 0``; see module docstring)."""

    method = "pact"

    def __init__(self, spec: QuantSpec, alpha: float | torch.Tensor, decay: float = 1e-4) -> None:
        if spec.format.signed or not isinstance(spec.granularity, PerTensor):
            raise ConfigError("PACT clips to [0, alpha]: it needs an unsigned per-tensor activation spec")
        qmax = spec.format.qmax
        super().__init__(spec, torch.as_tensor(float(alpha)) / qmax, torch.zeros((), dtype=torch.int32))
        del self.scale
        self.alpha = nn.Parameter(torch.as_tensor(float(alpha), dtype=torch.float32))
        self.decay = float(decay)

    def current_scale(self) -> torch.Tensor:
        return self.alpha.abs().clamp_min(1e-8) / self.spec.format.qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x):
            return x
        a = self.alpha.abs().clamp_min(1e-8)
        y = torch.minimum(torch.relu(x), a)  # d/dalpha = 1 where x >= alpha
        s = (a / self.spec.format.qmax).detach()
        yq = torch.clamp(_round(y.detach() / s, self.stochastic), 0, self.spec.format.qmax) * s
        return yq + (y - y.detach())

    def regularization(self) -> torch.Tensor:
        return self.decay * self.alpha**2


class DoReFaWeightQuant(LearnedQuant):
    """DoReFa weights (see module docstring); converted on the ``k + 1``-bit signed grid."""

    method = "dorefa"

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec.replace(granularity="per_tensor"), torch.ones(()), torch.zeros((), dtype=torch.int32), is_weight=True)
        self.levels = 2**spec.format.bits - 1

    def _codes_and_step(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.tanh(w)
        c = t.detach().abs().max().clamp_min(1e-8)
        wn = t / (2 * c) + 0.5
        m = 2 * _ste_round(wn * self.levels, self.stochastic) - self.levels  # odd integers in [-levels, levels]
        return m, c / self.levels

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        m, step = self._codes_and_step(w)
        self.scale = step.detach().clone()
        return m * step

    def frozen_grid(self, x: torch.Tensor | None = None) -> tuple[QuantSpec, torch.Tensor, torch.Tensor]:
        if x is not None:
            _, step = self._codes_and_step(x.detach())
            self.scale = step.clone()
        spec = self.spec.replace(bits=self.spec.format.bits + 1, signed=True, mapping="symmetric", rounding="nearest_even")
        return spec, self.scale.clone(), torch.zeros((), dtype=torch.int32)


class DoReFaActQuant(STEQuant):
    """DoReFa activations: ``clamp(x, 0, r)`` on a ``k``-bit uniform grid, ``r`` fixed from calibration."""

    method = "dorefa"


# --------------------------------------------------------------------------- extreme / non-uniform weights
# Binary and ternary weights (F15) and non-uniform grids (F4) as QAT weight quantizers; the math is
# in lowbit.quant.binary / lowbit.quant.nonuniform. Binary and TWN grids are uniform (codes +-1 / 0,+-1
# times alpha) and convert to a 2-bit integer grid; TTQ, power-of-two, ShiftCNN and k-means values are
# not, and convert to a frozen codebook (CodebookQuant).


class BinaryWeightQuant(LearnedQuant):
    """BWN / XNOR-Net weights ``alpha sign(W)`` (``alpha = mean|W|`` per output channel) or, with
    ``per_channel=False``, one ``alpha`` per layer (BNN-style sign weights kept at the layer's scale,
    since BatchNorm is folded). Clipped STE (:func:`lowbit.quant.binarize_weight`)."""

    method = "binary"

    def __init__(self, spec: QuantSpec, per_channel: bool = True) -> None:
        super().__init__(spec.replace(granularity="per_channel" if per_channel else "per_tensor", bits=2, signed=True,
                                      mapping="symmetric", axis=0), torch.ones(()), torch.zeros((), dtype=torch.int32), is_weight=True)
        self.axis = 0 if per_channel else None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        from ..quant import binarize_weight

        return binarize_weight(w, axis=self.axis)

    def frozen_grid(self, x: torch.Tensor | None = None) -> tuple[QuantSpec, torch.Tensor, torch.Tensor]:
        from ..quant import binary_scale

        a = binary_scale(x.detach(), axis=self.axis).clamp_min(1e-12)
        return self.spec.replace(rounding="nearest_even"), a, torch.zeros_like(a, dtype=torch.int32)


class TernaryWeightQuant(LearnedQuant):
    """TWN weights ``alpha t``, ``t in {-1, 0, 1}``, ``Delta = factor mean|W|`` per layer (:func:`lowbit.quant.ternarize_weight`)."""

    method = "twn"

    def __init__(self, spec: QuantSpec, factor: float = 0.7) -> None:
        super().__init__(spec.replace(granularity="per_tensor", bits=2, signed=True, mapping="symmetric"), torch.ones(()),
                         torch.zeros((), dtype=torch.int32), is_weight=True)
        self.factor = float(factor)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        from ..quant import ternarize_weight, twn_threshold

        return ternarize_weight(w, delta=twn_threshold(w.detach(), factor=self.factor))

    def frozen_grid(self, x: torch.Tensor | None = None) -> tuple[QuantSpec, torch.Tensor, torch.Tensor]:
        from ..quant import ternary_scale, twn_threshold

        a = ternary_scale(x.detach(), delta=twn_threshold(x.detach(), factor=self.factor)).clamp_min(1e-12)
        return self.spec.replace(rounding="nearest_even"), a, torch.zeros((), dtype=torch.int32)


class _CodebookMethod(LearnedQuant):
    """A weight quantizer whose values are not on a uniform grid: converts to :class:`CodebookQuant`."""

    levels_bits = 2

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec.replace(granularity="per_tensor"), torch.ones(()), torch.zeros((), dtype=torch.int32), is_weight=True)

    def frozen_grid(self, x: torch.Tensor | None = None):
        return None  # see frozen_codebook

    def frozen_codebook(self, w: torch.Tensor) -> torch.Tensor:
        """The distinct values the quantized weight takes (ascending)."""
        return torch.unique(self(w.detach()).detach())


class TTQWeightQuant(_CodebookMethod):
    """Trained ternary quantization: learned magnitudes ``W_p, W_n`` (:func:`lowbit.quant.ttq_quantize`),
    initialized to TWN's ``alpha`` for the same threshold."""

    method = "ttq"

    def __init__(self, spec: QuantSpec, w: torch.Tensor, t: float = 0.05) -> None:
        super().__init__(spec)
        wd = w.detach()
        delta = t * wd.abs().max()
        pos, neg = wd[wd > delta], wd[wd < -delta]
        self.wp = nn.Parameter(pos.mean().reshape(()) if pos.numel() else wd.abs().mean().reshape(()))
        self.wn = nn.Parameter((-neg).mean().reshape(()) if neg.numel() else wd.abs().mean().reshape(()))
        self.t = float(t)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        from ..quant import ttq_quantize

        return ttq_quantize(w, self.wp.abs().clamp_min(1e-8), self.wn.abs().clamp_min(1e-8), t=self.t)


class PoTWeightQuant(_CodebookMethod):
    """Power-of-two weights: ``{0, +-s 2^-k}`` with ``s`` = max|W| rounded up to a power of two (:func:`lowbit.quant.pot_quantize`)."""

    method = "pot"

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        from ..quant import pot_quantize

        return pot_quantize(w, self.spec.format.bits)


class ShiftCNNWeightQuant(_CodebookMethod):
    """ShiftCNN: each weight a sum of ``n_terms`` codewords ``{0, +-2^-m}`` times max|W| (:func:`lowbit.quant.shiftcnn_quantize`)."""

    method = "shiftcnn"

    def __init__(self, spec: QuantSpec, n_terms: int = 2) -> None:
        super().__init__(spec)
        self.n_terms = int(n_terms)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        from ..quant import shiftcnn_quantize

        return shiftcnn_quantize(w, self.n_terms, self.spec.format.bits)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_terms={self.n_terms}"


class KMeansWeightQuant(_CodebookMethod):
    """k-means codebook of ``2^bits`` centroids per layer (Deep Compression); the centroids are trained
    (their gradient is the sum of their weights' gradients) and the weights straight-through."""

    method = "kmeans"

    def __init__(self, spec: QuantSpec, w: torch.Tensor) -> None:
        from ..quant import kmeans_codebook

        super().__init__(spec)
        self.codebook = nn.Parameter(kmeans_codebook(w.detach(), spec.format.bits)[0])

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        from ..quant import codebook_quantize

        return codebook_quantize(w, self.codebook)


class CodebookQuant(nn.Module):
    """Frozen non-uniform weight grid of a converted model: every weight is one of ``codebook``'s
    ``K`` values (stored as ``ceil(log2 K)``-bit indices by :func:`lowbit.save`). No affine
    ``(S, Z)``: ONNX export and the integer engine refuse it with ``UnsupportedError``."""

    def __init__(self, spec: QuantSpec, codebook: torch.Tensor, method: str) -> None:
        super().__init__()
        self.register_buffer("codebook", codebook.detach().float().clone())
        self.method = method
        bits = max(1, math.ceil(math.log2(max(2, codebook.numel()))))
        self.spec = spec.replace(bits=bits, granularity="per_tensor")

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        from ..quant import codebook_quantize

        return codebook_quantize(w, self.codebook)

    def qparams(self, w: torch.Tensor | None = None):
        from ..errors import UnsupportedError

        raise UnsupportedError(f"a {self.method} codebook ({self.codebook.numel()} values) has no affine scale / zero point; "
                               "keep this model in lowbit's packed format (lowbit.save) or use an integer-grid recipe")

    def extra_repr(self) -> str:
        return f"{self.method} codebook, {self.codebook.numel()} values ({self.spec.format.bits}-bit indices)"


WEIGHT_METHODS = ("ste", "lsq", "dorefa", "dsq", "bwn", "binary", "twn", "ttq", "pot", "shiftcnn", "kmeans")
# weight bits each method supports (others: any); layers a recipe overrides to other widths (first / last) use LSQ
METHOD_BITS = {"bwn": (1,), "binary": (1,), "twn": (2,), "ttq": (2,), "pot": tuple(range(2, 9)),
               "shiftcnn": tuple(range(2, 9)), "kmeans": tuple(range(1, 9)), "dorefa": tuple(range(1, 8))}
ACTIVATION_METHODS = ("ste", "lsq", "pact", "dorefa", "dsq")

"""Dynamic quantized layers: one float weight, ``K`` candidate widths, a width chosen per input sample.

A dynamic layer holds one float weight ``W`` (and bias ``b``, BatchNorm already folded) and, for each
candidate width ``b_k`` (``b_1 < ... < b_K``), a trainable LSQ weight quantizer ``Q^w_k`` (signed
symmetric, one step per output channel) and a trainable LSQ quantizer ``Q^a_k`` of the layer's
input (one step per tensor; unsigned with zero point 0 when the calibration inputs were
non-negative, e.g. after a ReLU, signed symmetric otherwise). With a per-sample selection
``sel`` of shape ``[B, K]`` (one-hot rows; Liu et al. 2022, eq. "instance-aware quantization")::

    y_j = sum_k sel_jk * op(Q^a_k(x_j), Q^w_k(W)) + b

* **Training** (``sel`` carries a gradient): a straight-through sample (one-hot in value, e.g. a hard
  Gumbel sample) runs each sample through its chosen candidate with autograd (grouped, one op per
  candidate used) and every other candidate without autograd (:meth:`DynamicQuantLayer._straight_through`),
  so the controller gets the straight-through gradient ``dL/dsel_jk = <dL/dy_j, y_j^(k)>`` for every
  candidate at about ``K`` forward ops and one backward (summing the candidates with autograd costs
  ``K`` forwards and ``K`` backwards); a soft ``sel`` sums every candidate that some sample uses.
* **Inference** (a hard one-hot ``sel`` without gradient): the batch is split by candidate and each
  group runs once with its candidate's quantized weight: ``K_used`` small ops instead of ``K`` full
  ones, and the value equals the sum above exactly (``1 * y + 0 * y' = y``).

Cost of one sample at candidate ``k``: ``BitOPs_k = MACs * b_w,k * b_a,k`` with ``MACs`` measured from
the output shape of the last forward (``out[0].numel() * (C_in / groups) * k_h * k_w``; the same
count as :func:`lowbit.report.metrics.layer_macs`). Here ``b_w,k = b_a,k = b_k``.

The quantizers are :class:`lowbit.nn.learned.LSQQuant` (the fake-quant of
:func:`lowbit.quant.fake_quantize`, bit for bit, with LSQ's step gradient); their steps start from
lowbit's observers: the weight's own statistics at construction, the input's from calibration
(:meth:`DynamicQuantLayer.start_observing` ... :meth:`DynamicQuantLayer.finish_observing`).

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> layer = DynamicQuantLinear(torch.nn.Linear(16, 4), bits=(2, 4, 8))
    >>> x = torch.randn(6, 16)
    >>> layer.start_observing(); _ = layer(x); layer.finish_observing()
    >>> sel = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 2, 1, 0]), 3).float()
    >>> y = layer(x, sel)
    >>> torch.equal(y[2:4], layer.candidate_forward(x[2:4], 2)), [c["bitops"] for c in layer.candidate_costs()]
    (True, [256, 1024, 4096])
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ...config import QuantSpec
from ...errors import CalibrationError, ConfigError, UnsupportedError
from ...nn.layers import QuantConv2d, QuantLinear
from ...nn.learned import BinaryWeightQuant, LSQQuant
from ...observe import OBSERVERS, HistogramObserver, Observer, make_observer
from ...quant import Affine, IntFormat, PerChannel, PerTensor, Symmetric

#: candidate widths a dynamic layer accepts. At 1 bit the weights are binary, ``a sign(W)`` (BWN,
#: ``a = mean|W|`` per output channel; the signed 1-bit integer grid ``{-1, 0}`` would be one-sided)
#: and the inputs take a two-level affine grid ``{(0 - Z) S, (1 - Z) S}`` (``{0, S}`` after a ReLU).
CANDIDATE_BITS = tuple(range(1, 17))
WEIGHT_BINS = 256


def check_candidate_bits(bits: Iterable[int], where: str = "bits", lowest: int = CANDIDATE_BITS[0]) -> tuple[int, ...]:
    """Validate a candidate set: a non-empty, strictly increasing list of integer widths in ``lowest``..16.

    Example:
        >>> check_candidate_bits([2, 4, 8])
        (2, 4, 8)
        >>> check_candidate_bits([4, 2])
        Traceback (most recent call last):
        ...
        lowbit.errors.ConfigError: bits must be listed in increasing order, got [4, 2]; did you mean [2, 4]?
    """
    if isinstance(bits, str | bytes) or not isinstance(bits, Iterable):
        raise ConfigError(f"{where} must be a list of candidate bit widths (e.g. [2, 3, 4, 5, 6]), got {bits!r}")
    out = list(bits)
    if not out:
        raise ConfigError(f"{where} (the candidate widths) is empty; give at least one width in "
                          f"{lowest}..{CANDIDATE_BITS[-1]}, e.g. [2, 3, 4, 5, 6]")
    bad = [b for b in out if not isinstance(b, int) or isinstance(b, bool) or not lowest <= b <= CANDIDATE_BITS[-1]]
    if bad:
        raise ConfigError(f"{where} must be integer widths in {lowest}..{CANDIDATE_BITS[-1]}, got {bad[0]!r} in {out}")
    dup = sorted({b for b in out if out.count(b) > 1})
    if dup:
        raise ConfigError(f"{where} lists width {dup[0]} more than once ({out}); each candidate must be distinct")
    if out != sorted(out):
        raise ConfigError(f"{where} must be listed in increasing order, got {out}; did you mean {sorted(out)}?")
    return tuple(out)


def weight_spec(bits: int, observer: str = "mse") -> QuantSpec:
    """Candidate weight grid: signed symmetric ``bits``-bit integers, one step per output channel
    (at 1 bit: the binary weights ``a sign(W)`` are stored on the signed 2-bit grid, codes ``+-1``).

    >>> weight_spec(4).describe(), input_spec(4, signed=False).describe(), input_spec(1, signed=True).describe()
    ('int4 symmetric per_channel(0) mse', 'uint4 affine per_tensor mse', 'uint1 affine per_tensor mse')
    """
    bits = max(bits, 2)
    return QuantSpec(format=IntFormat(bits=bits, signed=True), mapping=Symmetric(), granularity=PerChannel(axis=0), observer=observer)


def input_spec(bits: int, signed: bool, observer: str = "mse") -> QuantSpec:
    """Candidate input grid, per tensor: unsigned with ``Z = 0`` (non-negative inputs) or signed symmetric;
    at 1 bit always a two-level affine grid (its ``Z`` in {0, 1} from the range: ``{0, S}`` or ``{-S, 0}``)."""
    if signed and bits > 1:
        return QuantSpec(format=IntFormat(bits=bits, signed=True), mapping=Symmetric(), granularity=PerTensor(), observer=observer)
    return QuantSpec(format=IntFormat(bits=bits, signed=False), mapping=Affine(), granularity=PerTensor(), observer=observer)


class DynamicQuantLayer(nn.Module):
    """Base of :class:`DynamicQuantConv2d` and :class:`DynamicQuantLinear` (see the module docstring).

    Attributes:
        bits: the candidate widths ``(b_1, ..., b_K)``.
        weight_quants, input_quants: one :class:`~lowbit.nn.learned.LSQQuant` per candidate.
        selection: a ``[B, K]`` selection used when :meth:`forward` gets none (set by
            :class:`~lowbit.algorithms.dynamic.DynamicQuantModel` for the duration of one forward).
        macs: multiply-accumulates per sample of the last forward (``None`` before the first).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, bits: Iterable[int], observer: str = "mse") -> None:
        super().__init__()
        self.bits = check_candidate_bits(bits)
        if observer not in OBSERVERS:
            raise ConfigError(f"unknown observer {observer!r}; known: {sorted(OBSERVERS)}")
        self.observer = observer
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        # one observer per layer serves every candidate; weight rows hold few values (9 for a depthwise 3x3),
        # so histogram observers get 256 bins instead of 2048 (8x less work, same ranges to within a bin)
        kw = {"bins": WEIGHT_BINS} if issubclass(OBSERVERS[observer], HistogramObserver) else {}
        ob = make_observer(observer, PerChannel(axis=0), **kw)
        ob.update(self.weight.detach())
        quants: list[nn.Module] = []
        for b in self.bits:
            spec = weight_spec(b, observer)
            if b == 1:
                quants.append(BinaryWeightQuant(spec))
                continue
            s, z = ob.qparams(spec.format, spec.mapping)
            quants.append(LSQQuant(spec, s, z, is_weight=True))
        self.weight_quants = nn.ModuleList(quants)
        # placeholder input grids (step 1): calibration sets the sign and the steps
        self.input_quants = nn.ModuleList(LSQQuant(input_spec(b, False, observer), torch.ones(()), torch.zeros((), dtype=torch.int32))
                                          for b in self.bits)
        self.input_signed = False
        self.calibrated = False
        self.macs: int | None = None
        self.__dict__["selection"] = None  # plain attribute, never a parameter / buffer
        self._observer: Observer | None = None
        self._input_min = math.inf

    # -- the op (``_op(x, w)``: the layer's float op with weight ``w``, defined by each subclass) ---
    @property
    def weight_bits(self) -> tuple[int, ...]:
        """``b_w,k`` per candidate (equal to :attr:`bits`)."""
        return self.bits

    @property
    def act_bits(self) -> tuple[int, ...]:
        """``b_a,k`` per candidate (equal to :attr:`bits`)."""
        return self.bits

    def quantized_weight(self, k: int) -> torch.Tensor:
        """``Q^w_k(W)``, the weight on candidate ``k``'s grid."""
        return self.weight_quants[k](self.weight)

    def candidate_forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """``op(Q^a_k(x), Q^w_k(W)) + b``: every sample of ``x`` at candidate ``k``."""
        self._check_calibrated()
        return self._op(self.input_quants[k](x), self.quantized_weight(k))

    # -- calibration -------------------------------------------------------------------------
    def start_observing(self) -> None:
        """Run in float and stream the inputs into an observer until :meth:`finish_observing`."""
        self._observer = make_observer(self.observer, PerTensor())
        self._input_min = math.inf

    def finish_observing(self) -> None:
        """Set every candidate's input grid from the observed range (signed iff an input was negative).

        Raises:
            CalibrationError: the layer saw no input while observing.
        """
        ob = self._observer
        if ob is None or ob.num_batches == 0:
            self.abort_observing()
            raise CalibrationError("a dynamic layer saw no input during calibration (a branch the calibration inputs never reach?)")
        signed = self._input_min < 0
        quants = []
        for b in self.bits:
            spec = input_spec(b, signed, self.observer)
            s, z = ob.qparams(spec.format, spec.mapping)
            quants.append(LSQQuant(spec, s, z))
        dev = self.weight.device
        self.input_quants = nn.ModuleList(quants).to(dev)
        self.input_signed = signed
        self.calibrated = True
        self._observer = None

    def abort_observing(self) -> None:
        """Stop observing without changing the grids."""
        self._observer = None

    def _check_calibrated(self) -> None:
        if not self.calibrated:
            raise CalibrationError(f"{type(self).__name__} has no input grids yet: calibrate it first "
                                   "(lowbit.algorithms.dynamic.prepare does, or start_observing / forward / finish_observing)")

    # -- forward -----------------------------------------------------------------------------
    def _record(self, y: torch.Tensor) -> torch.Tensor:
        if y.shape[0] > 0:
            self.macs = int(y[0].numel() * self.weight[0].numel())
        return y

    def forward(self, x: torch.Tensor, sel: torch.Tensor | None = None) -> torch.Tensor:
        """``y_j = sum_k sel_jk op(Q^a_k(x_j), Q^w_k(W)) + b`` (module docstring).

        Args:
            x: the input batch ``[B, ...]``.
            sel: ``[B, K]`` selection; defaults to :attr:`selection`; may be omitted when ``K = 1``.

        Raises:
            ConfigError: no selection for a layer with several candidates, or a selection of the wrong shape.
        """
        if self._observer is not None:  # calibration: float forward, statistics of the input
            xd = x.detach()
            self._observer.update(xd)
            self._input_min = min(self._input_min, float(xd.min()))
            return self._record(self._op(x, self.weight))
        self._check_calibrated()
        if sel is None:
            sel = self.selection
        if sel is None:
            if len(self.bits) == 1:
                return self._record(self.candidate_forward(x, 0))
            raise ConfigError(f"this dynamic layer has {len(self.bits)} candidate widths {list(self.bits)} and got no selection: "
                              "pass sel=[B, K] one-hot rows, or run it inside a DynamicQuantModel")
        if sel.ndim != 2 or sel.shape != (x.shape[0], len(self.bits)):
            raise ConfigError(f"selection must have shape [batch, K] = [{x.shape[0]}, {len(self.bits)}], got {list(sel.shape)}")
        sel = sel.to(x.dtype)
        if not sel.requires_grad and _is_one_hot(sel, tol=0.0):
            return self._record(self._grouped(x, sel.argmax(1)))
        return self._record(self._mixed(x, sel))

    def _mixed(self, x: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        """``sum_k sel[:, k] * y^(k)`` with its gradient (training).

        A straight-through sample (``sel`` one-hot in value, e.g. ``gumbel_softmax(hard=True)``) takes
        the cheap exact path :meth:`_straight_through`; a soft selection sums every candidate in use.
        """
        if _is_one_hot(sel.detach(), tol=ONE_HOT_TOL):
            return self._straight_through(x, sel, sel.detach().argmax(1))
        return self._soft(x, sel)

    def _straight_through(self, x: torch.Tensor, sel: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """The value and every gradient of ``sum_k sel_jk y_j^(k)`` for a one-hot-valued ``sel``, at about
        half the cost of summing the candidates with autograd::

            y_j = y_j^(c_j)                      c_j = argmax_k sel_jk; grouped, with autograd (1 forward + backward)
            dL/dsel_jk = <dL/dy_j, y_j^(k)>      y^(k) for the samples with c_j != k computed without autograd

        (:class:`_CarrySelectionGrad` attaches the second line.) The weight, its quantizers' steps and ``x``
        get their gradients through each sample's chosen candidate only, which is what the plain sum gives
        them too: its other terms are multiplied by ``sel_jk = 0``. Same value and gradients as
        :meth:`_soft` up to float rounding.
        """
        y = self._grouped(x, choice)
        xd = x.detach()
        alts = []
        with torch.no_grad():
            for k in range(len(self.bits)):
                other = torch.nonzero(choice != k).flatten()
                alts.append((other, self.candidate_forward(xd.index_select(0, other), k) if other.numel() else None))
        return _CarrySelectionGrad.apply(y, sel, alts)

    def _soft(self, x: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        """``sum_k sel[:, k] * y^(k)`` over the candidates some sample selects (autograd through each)."""
        active = torch.nonzero((sel.detach() != 0).any(0)).flatten().tolist()
        y = None
        for k in active:
            yk = self.candidate_forward(x, k)
            term = sel[:, k].reshape(-1, *([1] * (yk.ndim - 1))) * yk
            y = term if y is None else y + term
        if y is None:  # an all-zero selection: zero output of the right shape
            y = 0.0 * self.candidate_forward(x, 0)
        return y

    def _grouped(self, x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """Each sample at its own candidate, one op per candidate used (inference)."""
        used = torch.unique(choice).tolist()
        if len(used) == 1:
            return self.candidate_forward(x, used[0])
        idx = [torch.nonzero(choice == k).flatten() for k in used]
        ys = [self.candidate_forward(x.index_select(0, i), k) for i, k in zip(idx, used, strict=True)]
        order = torch.cat(idx)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return torch.cat(ys).index_select(0, inverse)

    # -- costs and export --------------------------------------------------------------------
    def candidate_costs(self) -> list[dict]:
        """Per candidate ``{"bits", "weight_bits", "act_bits", "macs", "bitops"}`` with
        ``bitops = macs * weight_bits * act_bits`` (MACs per sample, from the last forward).

        Raises:
            UnsupportedError: the layer has not run yet (its MACs depend on the input size).
        """
        if self.macs is None:
            raise UnsupportedError("this layer has not run yet; its MACs depend on the input size: run one forward first")
        return [{"bits": b, "weight_bits": bw, "act_bits": ba, "macs": self.macs, "bitops": self.macs * bw * ba}
                for b, bw, ba in zip(self.bits, self.weight_bits, self.act_bits, strict=True)]

    def _static(self, k: int, quant_cls: type) -> nn.Module:
        """Candidate ``k`` as ``quant_cls`` (QuantConv2d / QuantLinear) around a float copy of this layer
        (``self._float_layer()``, defined by each subclass), its grids pinned to the learned ones."""
        self._check_calibrated()
        wq, aq = self.weight_quants[k], self.input_quants[k]
        layer = self._float_layer()
        with torch.no_grad():
            # binary weights: the static layer holds a sign(W) itself (its grid a, Z = 0 gives codes +-1)
            layer.weight.copy_(self.quantized_weight(k) if isinstance(wq, BinaryWeightQuant) else self.weight)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        wspec, sw, zw = wq.frozen_grid(layer.weight)
        _, sa, za = aq.frozen_grid()
        q = quant_cls.from_float(layer, wspec, aq.spec)
        q.weight_quant.set_qparams(q.weight, sw, zw)
        q.input_quant.set_qparams(sa, za)
        return q.eval()

    def extra_repr(self) -> str:
        side = "signed" if self.input_signed else "unsigned"
        return f"bits={list(self.bits)}, input={side}{'' if self.calibrated else ' (uncalibrated)'}"


class _CarrySelectionGrad(torch.autograd.Function):
    """``y`` unchanged in value; backward adds ``dL/dsel_jk = <dL/dy_j, y_j^(k)>``.

    ``alts[k] = (idx, y^(k)[idx])``: candidate ``k``'s output for the samples ``idx`` that did not choose it;
    for the others ``y^(k)_j = y_j``.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, sel: torch.Tensor, alts: list) -> torch.Tensor:
        ctx.save_for_backward(y)
        ctx.alts = alts
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        gsel = None
        if ctx.needs_input_grad[1]:
            (y,) = ctx.saved_tensors
            g2 = g.reshape(g.shape[0], -1)
            own = (g2 * y.reshape(y.shape[0], -1)).sum(1)
            gsel = own.unsqueeze(1).repeat(1, len(ctx.alts))
            for k, (idx, yk) in enumerate(ctx.alts):
                if yk is not None:
                    gsel[idx, k] = (g2.index_select(0, idx) * yk.reshape(yk.shape[0], -1)).sum(1)
        ctx.alts = None
        return g, gsel, None


#: how far from 0 / 1 a straight-through selection's entries may be (``1 - p + p`` is not always 1 in float)
ONE_HOT_TOL = 1e-5


def _is_one_hot(sel: torch.Tensor, tol: float) -> bool:
    """Every row one-hot to within ``tol`` per entry (``tol = 0``: exactly)."""
    return bool(((sel - F.one_hot(sel.argmax(1), sel.shape[1]).to(sel.dtype)).abs() <= tol).all())


class DynamicQuantConv2d(DynamicQuantLayer):
    """A ``Conv2d`` (grouped / depthwise too) with per-sample candidate widths (module docstring).

    Example:
        >>> import torch
        >>> conv = DynamicQuantConv2d(torch.nn.Conv2d(3, 8, 3, padding=1), bits=(2, 8))
        >>> x = torch.rand(2, 3, 5, 5)
        >>> conv.start_observing(); _ = conv(x); conv.finish_observing()
        >>> conv(x, torch.tensor([[1.0, 0.0], [0.0, 1.0]])).shape, conv.macs, conv.input_signed
        (torch.Size([2, 8, 5, 5]), 5400, False)
    """

    def __init__(self, conv: nn.Conv2d, bits: Iterable[int], *, observer: str = "mse") -> None:
        if not isinstance(conv, nn.Conv2d):
            raise UnsupportedError(f"DynamicQuantConv2d wraps an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise UnsupportedError(f"padding_mode={conv.padding_mode!r} is not supported by dynamic layers (only 'zeros')")
        super().__init__(conv.weight, conv.bias, bits, observer)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _float_layer(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
                         self.groups, bias=self.bias is not None, device=self.weight.device)

    def to_static(self, k: int) -> QuantConv2d:
        """Candidate ``k`` as a plain :class:`lowbit.nn.QuantConv2d` pinned to its learned grids
        (computes exactly :meth:`candidate_forward` ``(x, k)``)."""
        return self._static(k, QuantConv2d)


class DynamicQuantLinear(DynamicQuantLayer):
    """An ``nn.Linear`` with per-sample candidate widths (module docstring).

    Example:
        >>> import torch
        >>> lin = DynamicQuantLinear(torch.nn.Linear(8, 3), bits=(2, 6))
        >>> x = torch.randn(4, 8)
        >>> lin.start_observing(); _ = lin(x); lin.finish_observing()
        >>> lin.input_signed, lin.to_static(1).weight_quant.spec.bits, lin.macs
        (True, 6, 24)
    """

    def __init__(self, linear: nn.Linear, bits: Iterable[int], *, observer: str = "mse") -> None:
        if not isinstance(linear, nn.Linear):
            raise UnsupportedError(f"DynamicQuantLinear wraps an nn.Linear, got {type(linear).__name__}")
        super().__init__(linear.weight, linear.bias, bits, observer)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, self.bias)

    def _float_layer(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.weight.device)

    def to_static(self, k: int) -> QuantLinear:
        """Candidate ``k`` as a plain :class:`lowbit.nn.QuantLinear` pinned to its learned grids."""
        return self._static(k, QuantLinear)


def dynamic_layer(mod: nn.Module, bits: Iterable[int], *, observer: str = "mse") -> DynamicQuantLayer:
    """The dynamic layer for a float ``nn.Conv2d`` / ``nn.Linear``.

    Example:
        >>> import torch
        >>> type(dynamic_layer(torch.nn.Conv2d(2, 2, 1), (4, 8))).__name__
        'DynamicQuantConv2d'

    Raises:
        UnsupportedError: any other layer type.
    """
    if isinstance(mod, nn.Conv2d):
        return DynamicQuantConv2d(mod, bits, observer=observer)
    if isinstance(mod, nn.Linear):
        return DynamicQuantLinear(mod, bits, observer=observer)
    raise UnsupportedError(f"dynamic quantization supports nn.Conv2d and nn.Linear layers, got {type(mod).__name__}")

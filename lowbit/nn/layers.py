"""Fake-quant layers: ``QuantLinear``, ``QuantConv1d``, ``QuantConv2d`` (grouped / depthwise too),
``QuantEmbedding`` (a quantized lookup table) and ``QuantAdd`` for residual additions.

A quantized layer computes ``y = op(aq_in(x), wq(W)) + b`` where ``wq`` fake-quantizes the
float master weight ``W`` and ``aq_in`` the input activation; the bias stays in high precision
(on integer hardware it is int32 with scale ``S_x * S_w``). The float module's parameters
are copied, so ``from_float`` never changes the original.

Example:
    >>> import torch
    >>> from lowbit.config import QuantSpec
    >>> lin = torch.nn.Linear(4, 3)
    >>> q = QuantLinear.from_float(lin, QuantSpec(), None)
    >>> q(torch.randn(2, 4)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import QuantSpec
from .quantizers import ActQuant, WeightQuant


class _QuantWeightMixin:
    """Shared: optional weight / input / output quantizers and a ``from_float`` constructor."""

    weight_quant: WeightQuant | None
    input_quant: ActQuant | None
    output_quant: ActQuant | None

    def _init_quant(self, weight: QuantSpec | None, activation: QuantSpec | None, output: QuantSpec | None = None) -> None:
        self.weight_quant = WeightQuant(weight) if weight is not None else None
        self.input_quant = ActQuant(activation) if activation is not None else None
        self.output_quant = ActQuant(output) if output is not None else None

    def quantized_weight(self) -> torch.Tensor:
        w = self.weight
        return self.weight_quant(w) if self.weight_quant is not None else w

    def _io(self, x: torch.Tensor, fn) -> torch.Tensor:
        smooth = getattr(self, "smooth", None)
        if smooth is not None:  # SmoothQuant / AWQ input scaling: W was multiplied by s, x is divided by it
            x = x / smooth
        if self.input_quant is not None:
            x = self.input_quant(x)
        y = fn(x, self.quantized_weight())
        if self.output_quant is not None:
            y = self.output_quant(y)
        return y


class QuantLinear(_QuantWeightMixin, nn.Linear):
    """``nn.Linear`` with fake-quantized weight and input.

    An optional ``smooth`` buffer (shape ``[in_features]``, set by SmoothQuant / AWQ when the scale cannot
    be folded into the producer of the input) makes it compute ``Q(x / s) Q(W diag(s))^T + b``, which
    equals ``x W^T + b`` before quantization.
    """

    @classmethod
    def from_float(cls, mod: nn.Linear, weight: QuantSpec | None, activation: QuantSpec | None, output: QuantSpec | None = None) -> QuantLinear:
        q = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, device=mod.weight.device, dtype=mod.weight.dtype)
        q.load_state_dict(mod.state_dict())
        q._init_quant(weight, activation, output)
        q.train(mod.training)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._io(x, lambda x, w: F.linear(x, w, self.bias))


def _conv_from_float(cls, mod, weight, activation, output):
    q = cls(
        mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
        dilation=mod.dilation, groups=mod.groups, bias=mod.bias is not None, padding_mode=mod.padding_mode,
        device=mod.weight.device, dtype=mod.weight.dtype,
    )
    q.load_state_dict(mod.state_dict())
    q._init_quant(weight, activation, output)
    q.train(mod.training)
    return q


class QuantConv1d(_QuantWeightMixin, nn.Conv1d):
    """``nn.Conv1d`` with fake-quantized weight and input."""

    @classmethod
    def from_float(cls, mod, weight, activation, output=None) -> QuantConv1d:
        return _conv_from_float(cls, mod, weight, activation, output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._io(x, lambda x, w: self._conv_forward(x, w, self.bias))


class QuantConv2d(_QuantWeightMixin, nn.Conv2d):
    """``nn.Conv2d`` (incl. grouped / depthwise) with fake-quantized weight and input."""

    @classmethod
    def from_float(cls, mod, weight, activation, output=None) -> QuantConv2d:
        return _conv_from_float(cls, mod, weight, activation, output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._io(x, lambda x, w: self._conv_forward(x, w, self.bias))


class QuantEmbedding(_QuantWeightMixin, nn.Embedding):
    """``nn.Embedding`` whose table is fake-quantized (weight-only: the looked-up rows are
    ``S (Q - Z)`` of the table's integer codes; per_channel(0) gives every token row its own scale).

    Example:
        >>> import torch
        >>> from lowbit.config import QuantSpec
        >>> from lowbit.quant import PerChannel
        >>> e = QuantEmbedding.from_float(torch.nn.Embedding(10, 4), QuantSpec(granularity=PerChannel(0)))
        >>> e(torch.tensor([[1, 2]])).shape
        torch.Size([1, 2, 4])
    """

    @classmethod
    def from_float(cls, mod: nn.Embedding, weight: QuantSpec | None, activation: QuantSpec | None = None,
                   output: QuantSpec | None = None) -> QuantEmbedding:
        q = cls(mod.num_embeddings, mod.embedding_dim, padding_idx=mod.padding_idx, device=mod.weight.device,
                dtype=mod.weight.dtype)
        q.load_state_dict(mod.state_dict())
        q._init_quant(weight, None, output)
        q.train(mod.training)
        return q

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.quantized_weight(), self.padding_idx)


QUANT_MODULES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
}


class QuantAdd(nn.Module):
    """``aq_out(aq_a(a) + aq_b(b))`` — a residual add as an integer runtime executes it
    (both operands on int8 grids, the sum requantized to its own grid).

    Non-tensor operands (e.g. ``int`` shape arithmetic captured by the graph) are added as is.
    """

    def __init__(self, spec: QuantSpec, fused_relu: bool = False) -> None:
        super().__init__()
        self.input_quant_a = ActQuant(spec)
        self.input_quant_b = ActQuant(spec)
        self.output_quant = ActQuant(spec)
        self.fused_relu = fused_relu  # the sum goes through ReLU before its quantizer (add + ReLU in one kernel)

    def forward(self, a, b):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.is_floating_point() and b.is_floating_point()):
            return a + b
        s = self.input_quant_a(a) + self.input_quant_b(b)
        return self.output_quant(torch.relu(s) if self.fused_relu else s)

    def extra_repr(self) -> str:
        return "fused_relu=True" if self.fused_relu else ""


def is_quant_module(m: nn.Module) -> bool:
    """True for lowbit's quantized layers."""
    return isinstance(m, _QuantWeightMixin)

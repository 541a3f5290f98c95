"""Run a converted binary network with its binary layers on the XNOR-popcount kernels.

After ``quantize_(model, QATConfig(..., step="convert"))`` with the ``xnor`` or ``bnn`` recipe, the
body layers hold binary weights and 1-bit inputs. :func:`to_bitwise` swaps each such layer for a
:class:`BitwiseLayer` that computes its product with :func:`~lowbit.runtime.binary_conv2d` /
:func:`~lowbit.runtime.binary_linear` (packed 64 per word, XNOR + popcount); the other layers (the
8-bit first and last ones, residual adds, pooling) run as before.

A layer qualifies when (a) every code of its weight grid is ``-1`` or ``+1``, so ``w = alpha_c b``
with ``b in {-1, +1}`` (``alpha`` per output channel or per layer), and (b) its input quantizer
has one bit: ``a = s (q - z)`` with ``q in {0, 1}``. The kernels take ``+-1`` operands, so with
``t = 2q - 1`` and the layer's zero padding:

.. math::

    D = \\sum_{valid} q\\,b = \\frac{T + M}{2}, \\qquad T = \\sum_{valid} t\\,b, \\qquad
    M = \\sum_{valid} b \\ (\\text{the kernel applied to } t \\equiv +1),

    \\mathrm{conv}(a, w) = s\\,\\alpha_c\\,(D - z M) + \\mathrm{bias}.

``T`` and ``M`` are exact integers (popcounts), hence so is ``D``: it equals the float
simulation's ``conv(q, b)`` bit for bit. Only the final scaling is float, and it rounds differently
from the simulation's float convolution, so logits agree only to float rounding (the tests check
``1e-4``) and top-1 predictions can differ at near-ties; ``bench/xnor_kernel.py --network`` measures
both on a trained model (not yet run).

Example:
    >>> import torch, lowbit
    >>> from lowbit.runtime.bitwise import to_bitwise
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
    ...                           torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 26 * 26, 10)).eval()
    >>> x = torch.randn(16, 1, 28, 28)
    >>> cfg = lowbit.load_recipe("xnor")
    >>> q = lowbit.quantize_(lowbit.quantize_(net, cfg, data=[x]), cfg.replace(step="convert"))
    >>> fast, info = to_bitwise(q)
    >>> info["bitwise_layers"], torch.equal(fast(x).argmax(1), q(x).argmax(1))
    (['2'], True)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UnsupportedError
from ..nn import ActQuant, WeightQuant
from ..nn.layers import QuantConv2d, QuantLinear
from ..quant import PerTensor, quantize
from .xnor import binary_conv2d, binary_linear, pack_conv_weight, pack_signs


def _why_not(m: nn.Module) -> str | None:
    """``None`` if ``m`` can run bitwise, else the reason it cannot."""
    if not isinstance(m, QuantConv2d | QuantLinear):
        return "not a Conv2d / Linear"
    wq, iq = m.weight_quant, m.input_quant
    if not isinstance(wq, WeightQuant):
        return "weights not on an integer grid"
    if not isinstance(iq, ActQuant) or iq.spec.dynamic or iq.scale is None:
        return "input not statically quantized"
    if iq.spec.format.bits != 1:
        return f"{iq.spec.format.bits}-bit inputs (bitwise needs 1)"
    if isinstance(m, QuantConv2d) and (m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros"
                                       or isinstance(m.padding, str)):
        return "grouped / dilated / non-zero-padded convolution"
    scale, zp = wq.qparams(m.weight)
    codes = quantize(m.weight.detach(), scale, zp, wq.spec.format, wq.spec.granularity)
    if not bool(((codes == 1) | (codes == -1)).all()) or bool((zp != 0).any()):
        return "weights not binary (codes other than -1 / +1)"
    return None


class BitwiseLayer(nn.Module):
    """A binary conv / linear layer executed by XNOR-popcount (see the module docstring)."""

    def __init__(self, m: QuantConv2d | QuantLinear) -> None:
        super().__init__()
        wq, iq = m.weight_quant, m.input_quant
        scale, zp = wq.qparams(m.weight)
        b = quantize(m.weight.detach(), scale, zp, wq.spec.format, wq.spec.granularity).float()
        self.is_conv = isinstance(m, QuantConv2d)
        self.weight_shape = tuple(b.shape)
        self.register_buffer("packed", pack_conv_weight(b) if self.is_conv else pack_signs(b))
        self.register_buffer("alpha", scale.detach().float().reshape(-1).clone())
        self.register_buffer("bias", None if m.bias is None else m.bias.detach().clone())
        self.in_spec = iq.spec
        self.register_buffer("in_scale", iq.scale.detach().clone())
        self.register_buffer("in_zero_point", iq.zero_point.detach().clone())
        self.stride = tuple(m.stride) if self.is_conv else None
        self.padding = tuple(m.padding) if self.is_conv else None
        self.output_quant = m.output_quant
        self._ones: dict[tuple, torch.Tensor] = {}

    def _product(self, t: torch.Tensor) -> torch.Tensor:
        if self.is_conv:
            return binary_conv2d(t, self.packed, self.weight_shape, stride=self.stride, padding=self.padding)
        return binary_linear(t, self.packed, self.weight_shape[1])

    def _m(self, x: torch.Tensor) -> torch.Tensor:
        """``M``: the per-output sum of ``b`` over the valid taps, cached per input size."""
        key = tuple(x.shape[1:])
        if key not in self._ones:
            self._ones[key] = self._product(torch.ones((1, *key), dtype=torch.float32))
        return self._ones[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = quantize(x, self.in_scale, self.in_zero_point, self.in_spec.format, PerTensor()).to(torch.float32)
        t = 2.0 * q - 1.0
        d = (self._product(t) + self._m(x)) * 0.5  # exact integers: sum over valid taps of q * b
        z = self.in_zero_point.to(torch.float32)
        if bool(z != 0):
            d = d - z * self._m(x)
        shape = (1, -1, 1, 1) if self.is_conv else (1, -1)
        a = self.alpha.view(shape) if self.alpha.numel() > 1 else self.alpha.reshape(())
        y = (d * (self.in_scale.float() * a)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return self.output_quant(y) if self.output_quant is not None else y

    def extra_repr(self) -> str:
        return f"{'conv' if self.is_conv else 'linear'} {self.weight_shape}, XNOR-popcount"


def to_bitwise(model: nn.Module) -> tuple[nn.Module, dict]:
    """A copy of ``model`` whose binary layers run on XNOR-popcount kernels.

    Returns ``(model_copy, info)``; ``info["bitwise_layers"]`` names the swapped layers and
    ``info["kept"]`` maps every other quantized conv / linear to the reason it stays as it was.
    The caller's model is not modified.

    Raises:
        UnsupportedError: no layer qualifies (the reasons are in the message): convert a binary
            QAT recipe (``xnor``, ``bnn``) first.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedError(f"to_bitwise takes a torch.nn.Module, got {type(model).__name__}")
    fast = copy.deepcopy(model).eval()
    swapped, kept = [], {}
    for name, m in list(fast.named_modules()):
        if not isinstance(m, QuantConv2d | QuantLinear):
            continue
        why = _why_not(m)
        if why is not None:
            kept[name] = why
            continue
        parent_name, _, child = name.rpartition(".")
        parent = fast.get_submodule(parent_name) if parent_name else fast
        setattr(parent, child, BitwiseLayer(m))
        swapped.append(name)
    if not swapped:
        detail = "; ".join(f"{n}: {w}" for n, w in kept.items()) or "no quantized conv / linear layer"
        raise UnsupportedError(f"no layer can run bitwise ({detail}); quantize with a binary recipe (xnor, bnn) and convert it first")
    return fast, {"bitwise_layers": swapped, "kept": kept}


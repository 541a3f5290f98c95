"""Metrics: SQNR, stored size, MACs / BitOPs.

* ``SQNR_dB = 10 log10( sum r^2 / sum (r - r_q)^2 )`` — signal-to-quantization-noise ratio.
* Stored size: float tensors at 4 bytes; a quantized weight at ``bits/8`` bytes per element
  (bit-packed) plus one fp32 scale and one zero point of ``ceil(bits/8)`` bytes per row of
  its granularity; biases stay 4 bytes (int32 on integer hardware).
* ``BitOPs = sum_layers MACs * b_w * b_a`` (float layers count 32 x 32).

Example:
    >>> import torch
    >>> r = torch.tensor([1.0, -1.0, 2.0]); round(sqnr_db(r, r + 0.01), 1)
    43.0
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn import QuantAdd
from ..nn.layers import is_quant_module


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """``10 log10(||ref||^2 / ||ref - test||^2)``; ``inf`` when identical."""
    ref, test = ref.detach().double(), test.detach().double()
    noise = float(((ref - test) ** 2).sum())
    sig = float((ref**2).sum())
    if noise == 0:
        return math.inf
    if sig == 0:
        return -math.inf
    return 10 * math.log10(sig / noise)


def float_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's float parameters and buffers at 4 bytes each (as a float checkpoint stores them)."""
    n = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            n += t.numel() * 4
    return n


def quantized_size_bytes(model: nn.Module) -> int:
    """Bytes of the quantized model as its weights would be stored (see module docstring).

    Activation qparams add 8 bytes per activation quantizer.
    """
    n = 0
    seen: set[int] = set()
    for m in model.modules():
        if is_quant_module(m):
            seen.update(id(p) for p in m.parameters(recurse=False))
            wq = m.weight_quant
            if wq is not None:
                bits = wq.spec.format.bits
                wq.qparams(m.weight)
                rows = max(1, wq.scale.numel())
                n += math.ceil(m.weight.numel() * bits / 8) + rows * (4 + math.ceil(bits / 8))
            else:
                n += m.weight.numel() * 4
            if m.bias is not None:
                n += m.bias.numel() * 4
    for p in model.parameters():
        if id(p) not in seen:
            n += p.numel() * 4
            seen.add(id(p))
    from ..nn import ActQuant

    n += 8 * sum(1 for m in model.modules() if isinstance(m, ActQuant) and not m.spec.dynamic)
    return n


@torch.no_grad()
def layer_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per sample of every Conv / Linear layer (quantized or not), by name."""
    macs: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear):
            def hook(mod, inp, out, name=name):
                per_out = mod.weight[0].numel()  # in/groups * kernel (conv) or in_features (linear)
                macs[name] = int(out[0].numel() * per_out)
            hooks.append(m.register_forward_hook(hook))
    try:
        model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return macs


def bitops(model: nn.Module, example: torch.Tensor) -> dict:
    """Total BitOPs per sample of ``model`` and the float equivalent: ``sum MACs * b_w * b_a``."""
    macs = layer_macs(model, example)
    total = total_fp = 0
    for name, n in macs.items():
        m = model.get_submodule(name)
        bw = m.weight_quant.spec.format.bits if is_quant_module(m) and m.weight_quant is not None else 32
        ba = m.input_quant.spec.format.bits if is_quant_module(m) and m.input_quant is not None else 32
        total += n * bw * ba
        total_fp += n * 32 * 32
    return {"bitops": total, "fp32_bitops": total_fp, "macs": sum(macs.values())}


def count_quant_adds(model: nn.Module) -> int:
    """Number of quantized residual adds."""
    return sum(1 for m in model.modules() if isinstance(m, QuantAdd))

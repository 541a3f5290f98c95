"""Model rewrites as passes: ``model = FoldBatchNorm().apply(model)``.

BatchNorm folding: for ``y = BN(conv(x))`` with running statistics ``mu, var``, affine
``gamma, beta`` and ``eps``, per output channel ``c``::

    k_c  = gamma_c / sqrt(var_c + eps)
    W'_c = k_c * W_c
    b'_c = k_c * (b_c - mu_c) + beta_c

after which the BatchNorm becomes ``nn.Identity``. Exact in eval mode.

Example:
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    >>> _ = m[1].running_mean.uniform_(), m[1].running_var.uniform_(0.5, 2)
    >>> x = torch.randn(2, 1, 8, 8); ref = m(x)
    >>> folded = FoldBatchNorm().apply(m)
    >>> type(folded[1]).__name__, torch.allclose(folded(x), ref, atol=1e-5)
    ('Identity', True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .graph import conv_bn_pairs, try_trace


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace submodule ``name`` (dotted path) of ``model`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def fold_bn_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn``'s eval-mode affine transform into ``layer``'s weight and bias (in place)."""
    k = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    w = layer.weight
    layer.weight.copy_(w * k.reshape(-1, *([1] * (w.ndim - 1))))
    b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_b = k * (b - bn.running_mean) + beta
    if layer.bias is None:
        layer.bias = nn.Parameter(new_b)
    else:
        layer.bias.copy_(new_b)


@dataclass
class FoldBatchNorm:
    """Fold every Conv/Linear -> BatchNorm pair found by tracing; BN becomes Identity. In place."""

    folded: list[tuple[str, str]] = field(default_factory=list)

    def apply(self, model: nn.Module) -> nn.Module:
        gm = try_trace(model, "BatchNorm folding")
        if gm is None:
            return model
        for conv_name, bn_name in conv_bn_pairs(gm):
            fold_bn_into(model.get_submodule(conv_name), model.get_submodule(bn_name))
            set_submodule(model, bn_name, nn.Identity())
            self.folded.append((conv_name, bn_name))
        return model

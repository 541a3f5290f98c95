"""Trained weight sharing (Han et al. 2016, §3): every weight of a layer is one of ``K`` shared values.

Per layer, the nonzero weights are clustered by 1-d k-means into ``K - 1 = 2^b - 1`` centroids, started
from the **linear** initialization ``c_k = min w + (k - 1) (max w - min w) / (K - 2)``, evenly over the nonzero
weights' range (it keeps the rare large weights represented, which density-based starts lose); the pruned weights keep the
fixed value 0 (index 0), so sparsity survives sharing. The layer then computes with
``W = C[I]``, ``C = (0, c_1, ..., c_{K-1})``, ``I`` the frozen index map, and fine-tuning updates only the
centroids with the gradient **summed over each cluster**::

    dL/dc_k = sum_{i : I_i = k} dL/dW_i

(``C[I]``'s backward is exactly that scatter-add). :func:`unshare` writes ``C[I]`` back as a plain weight.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(4, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = lin.weight.copy_(torch.tensor([[0.0, 0.9, 1.1, -2.0]]))
    >>> share_weights(torch.nn.Sequential(lin), ["0"], bits=2)["0"]["clusters"]
    3
    >>> lin.weight.tolist()                      # 0 stays 0; 0.9 and 1.1 share their mean
    [[0.0, 1.0, 1.0, -2.0]]
    >>> lin(torch.ones(1, 4)).sum().backward()
    >>> lin.weight_centroids.grad.tolist()        # per-cluster sums of dL/dW = 1: clusters {-2}, {}, {0.9, 1.1}
    [1.0, 0.0, 2.0]
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ...quant import lloyd_1d


def linear_init(values: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` centroids evenly spaced over ``[min, max]`` of ``values`` (Han et al.'s linear initialization).

    Example:
        >>> linear_init(torch.tensor([-1.0, 0.5, 3.0]), 3).tolist()
        [-1.0, 1.0, 3.0]
    """
    lo, hi = float(values.min()), float(values.max())
    return torch.linspace(lo, hi, k, dtype=torch.float64)


class _SharedWeight:
    """Forward pre-hook: ``module.weight = cat(0, centroids)[index]`` before every call."""

    def __call__(self, module: nn.Module, inputs) -> None:
        module.weight = shared_value(module)


def shared_value(module: nn.Module) -> torch.Tensor:
    """The layer's current weight ``C[I]`` (``C = (0, weight_centroids)``)."""
    c = module.weight_centroids
    table = torch.cat([c.new_zeros(1), c])
    return table[module.weight_index.long()]


def share_weights(model: nn.Module, names: list[str], bits: int | dict[str, int] = 4, *, iters: int = 50) -> dict[str, dict]:
    """Cluster the weights of the named layers (module docstring) and make them shared, in place.

    Args:
        model: the (pruned) model.
        names: layers to share (Conv / Linear).
        bits: index width ``b`` (``2^b`` values including the zero), 1..8, or ``{name: b}`` per layer.
        iters: Lloyd iterations.

    Returns:
        ``{name: {"bits", "clusters", "nonzero", "mse"}}`` (``mse`` of the shared weights vs the originals).
    """
    out = {}
    for name in names:
        m = model.get_submodule(name)
        b = bits.get(name, 4) if isinstance(bits, dict) else bits
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8:
            raise ConfigError(f"sharing bits of {name} must be an integer in 1..8 (2^b values with the zero), got {b!r}")
        if hasattr(m, "weight_centroids"):
            raise ConfigError(f"layer {name} already shares its weights; call unshare(model) first")
        w = m.weight.detach()
        nz = w != 0
        values = w[nz]
        k = 2**b - 1
        if values.numel() == 0:
            centroids = torch.zeros(k)
            index = torch.zeros(w.shape, dtype=torch.uint8)
        else:
            cb, idx = lloyd_1d(values, linear_init(values, min(k, values.numel())), iters)
            centroids = torch.cat([cb, cb.new_full((k - cb.numel(),), float(cb[-1]))]) if cb.numel() < k else cb
            index = torch.zeros(w.shape, dtype=torch.uint8)
            index[nz] = (idx + 1).to(torch.uint8)
        del m._parameters["weight"]
        m.register_parameter("weight_centroids", nn.Parameter(centroids.float().to(w.device)))
        m.register_buffer("weight_index", index.to(w.device))
        m.weight = shared_value(m)
        m.register_forward_pre_hook(_SharedWeight())
        out[name] = {"bits": b, "clusters": k, "nonzero": int(nz.sum()), "mse": float(((m.weight.detach() - w) ** 2).mean())}
    return out


def shared_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose weights are shared."""
    return [n for n, m in model.named_modules() if hasattr(m, "weight_centroids") and hasattr(m, "weight_index")]


def unshare(model: nn.Module) -> None:
    """Turn every shared layer back into a plain one whose ``weight`` holds ``C[I]`` (exactly ``2^b`` or fewer
    distinct values, zeros where pruned).

    Example:
        >>> seq = torch.nn.Sequential(torch.nn.Linear(8, 2))
        >>> _ = share_weights(seq, ["0"], bits=1); unshare(seq)
        >>> isinstance(seq[0].weight, torch.nn.Parameter), seq[0].weight.unique().numel() <= 2
        (True, True)
    """
    for name in shared_layers(model):
        m = model.get_submodule(name)
        w = shared_value(m).detach().clone()
        for key in [k for k, h in m._forward_pre_hooks.items() if isinstance(h, _SharedWeight)]:
            del m._forward_pre_hooks[key]
        del m._parameters["weight_centroids"]
        del m._buffers["weight_index"]
        if "weight" in m.__dict__:
            del m.__dict__["weight"]
        m.weight = nn.Parameter(w)

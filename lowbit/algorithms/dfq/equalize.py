"""Data-free quantization building blocks (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction").

* :func:`bn_statistics` — before BatchNorm folding, the distribution of every conv / linear output
  that a BN normalizes: ``y_c ~ N(beta_c, gamma_c^2)`` (BN's learned shift and scale).
* :func:`equalization_pairs` / :func:`equalize` — cross-layer equalization (CLE). For a pair
  ``layer1 -> [ReLU] -> layer2`` and channel ``i`` with weight ranges ``r1_i = max|W1[i, ...]|`` and
  ``r2_i = max|W2[:, i, ...]|``, ``s_i = sqrt(r1_i r2_i) / r2_i``; ``W1[i] /= s_i``, ``b1[i] /= s_i``,
  ``W2[:, i] *= s_i``. ReLU is positively homogeneous (``relu(x/s) = relu(x)/s``), so the network
  function is unchanged while both ranges become ``sqrt(r1_i r2_i)`` — what per-tensor weight
  quantization needs. Sweeps repeat until the scales converge.
* :func:`absorb_high_bias` — for a pair through ReLU, ``c_i = max(0, beta_i - 3 gamma_i)`` is moved
  from ``b1`` into ``b2 += W2[:, i].sum(spatial) * c_i`` (exact wherever ``y_i >= c_i``, i.e. for
  ~99.9 % of a Gaussian's mass), shrinking the activation range the next quantizer must cover.
* :func:`relu_moments` / :func:`clipped_moments` — mean and variance of a rectified / clipped Gaussian,
  used by analytic bias correction and by data-free activation ranges.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    >>> with torch.no_grad():
    ...     m[0].weight[:4] *= 20  # badly balanced channels
    >>> x = torch.randn(2, 3, 9, 9); y = m(x)
    >>> pairs, skipped = equalization_pairs(m)
    >>> pairs
    [('0', '2', 'relu')]
    >>> _ = equalize(m, pairs)
    >>> torch.allclose(m(x), y, atol=1e-4)
    True
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...transform.graph import conv_bn_pairs, try_trace

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def bn_statistics(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer: (beta, |gamma|)}`` for every conv / linear followed by a BatchNorm (call before folding)."""
    gm = try_trace(model, "BatchNorm statistics")
    if gm is None:
        return {}
    stats = {}
    for conv, bn_name in conv_bn_pairs(gm):
        bn = model.get_submodule(bn_name)
        gamma = bn.weight.detach().abs().clone() if bn.affine else torch.ones_like(bn.running_var)
        beta = bn.bias.detach().clone() if bn.affine else torch.zeros_like(bn.running_mean)
        stats[conv] = (beta, gamma)
    return stats


def _is(gm: fx.GraphModule, node: fx.Node, types) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), types)


def _activation_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    if _is(gm, node, nn.ReLU) or (node.op == "call_function" and node.target in (F.relu, torch.relu)):
        return "relu"
    if _is(gm, node, nn.Identity | nn.Dropout):
        return "identity"
    if _is(gm, node, nn.ReLU6) or (node.op == "call_function" and node.target is F.relu6):
        return "relu6"
    return None


def equalization_pairs(model: nn.Module) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """Pairs ``(layer1, layer2, "relu" | "linear")`` that cross-layer equalization may rescale, and the
    candidates it skipped with the reason (several readers of layer1's output, a non-homogeneous op
    in between such as ReLU6 or an add, grouped convs whose channels do not line up, ...)."""
    gm = try_trace(model, "cross-layer equalization")
    if gm is None:
        return [], [{"layer": "*", "reason": "the model cannot be traced by torch.fx"}]
    pairs, skipped = [], []
    for node in gm.graph.nodes:
        if not _is(gm, node, _LAYERS):
            continue
        cur, through = node, "linear"
        while True:
            if len(cur.users) != 1:
                if cur is not node or len(cur.users) > 1:
                    skipped.append({"layer": node.target, "reason": f"its output is read by {len(cur.users)} ops (residual or branch)"})
                break
            (nxt,) = cur.users
            kind = _activation_kind(gm, nxt)
            if kind == "identity":
                cur = nxt
                continue
            if kind == "relu":
                through, cur = "relu", nxt
                continue
            if kind == "relu6":
                skipped.append({"layer": node.target, "reason": f"ReLU6 after it ({nxt.target if nxt.op == 'call_module' else nxt.name}) "
                                "is not scale-equivariant; set relu6_to_relu: true as the DFQ paper does"})
                break
            if _is(gm, nxt, _LAYERS):
                l1, l2 = gm.get_submodule(node.target), gm.get_submodule(nxt.target)
                out1 = l1.weight.shape[0]
                groups2 = getattr(l2, "groups", 1)
                in2 = l2.weight.shape[1] * groups2
                if out1 != in2:
                    skipped.append({"layer": node.target, "reason": f"{out1} output channels feed {in2} inputs of {nxt.target} (reshape between)"})
                elif groups2 not in (1, in2):
                    skipped.append({"layer": node.target, "reason": f"{nxt.target} is a grouped conv (groups={groups2})"})
                else:
                    pairs.append((node.target, nxt.target, through))
            else:
                what = nxt.target if nxt.op == "call_module" else getattr(nxt.target, "__name__", str(nxt.target))
                if nxt.op != "output":
                    skipped.append({"layer": node.target, "reason": f"followed by {what}, not by a conv / linear"})
            break
    return pairs, skipped


def _in_ranges(l2: nn.Module) -> torch.Tensor:
    w = l2.weight.detach().abs()
    if getattr(l2, "groups", 1) > 1:  # depthwise: input channel i is output channel i
        return w.flatten(1).amax(1)
    return w.transpose(0, 1).flatten(1).amax(1)


def _scale_in(l2: nn.Module, s: torch.Tensor) -> None:
    shape = [1] * l2.weight.ndim
    if getattr(l2, "groups", 1) > 1:
        shape[0] = -1
    else:
        shape[1] = -1
    l2.weight.mul_(s.reshape(shape))


@torch.no_grad()
def equalize(model: nn.Module, pairs: list[tuple[str, str, str]], stats: dict | None = None, sweeps: int = 20, tol: float = 1e-4) -> dict:
    """Cross-layer equalization of ``pairs`` in place (``stats`` — BN statistics — are rescaled too).
    Returns ``{"sweeps": n, "max_log_scale": ...}``."""
    n = 0
    worst = 0.0
    for n in range(1, sweeps + 1):  # noqa: B007 - n is reported after the loop
        worst = 0.0
        for a, b, _ in pairs:
            l1, l2 = model.get_submodule(a), model.get_submodule(b)
            r1 = l1.weight.detach().abs().flatten(1).amax(1)
            r2 = _in_ranges(l2)
            s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 * r2) / r2.clamp_min(1e-30), torch.ones_like(r1))
            l1.weight.div_(s.reshape(-1, *([1] * (l1.weight.ndim - 1))))
            if l1.bias is not None:
                l1.bias.div_(s)
            _scale_in(l2, s)
            if stats is not None and a in stats:
                beta, gamma = stats[a]
                stats[a] = (beta / s, gamma / s)
            worst = max(worst, float(s.log().abs().max()))
        if worst < tol:
            break
    return {"sweeps": n, "max_log_scale": worst}


@torch.no_grad()
def absorb_high_bias(model: nn.Module, pairs: list[tuple[str, str, str]], stats: dict, n_sigma: float = 3.0) -> dict[str, float]:
    """Move ``c = max(0, beta - n_sigma * gamma)`` from layer1's bias into layer2's, for pairs through ReLU.
    Returns ``{layer1: total absorbed}``."""
    out = {}
    for a, b, through in pairs:
        if through != "relu" or a not in stats:
            continue
        beta, gamma = stats[a]
        c = (beta - n_sigma * gamma).clamp_min(0)
        if not bool((c > 0).any()):
            continue
        l1, l2 = model.get_submodule(a), model.get_submodule(b)
        if l1.bias is None:
            continue
        l1.bias.sub_(c)
        stats[a] = (beta - c, gamma)
        w = l2.weight.detach()
        if getattr(l2, "groups", 1) > 1:
            add = w.flatten(1).sum(1) * c
        else:
            add = w.flatten(2).sum(2) @ c if w.ndim > 2 else w @ c
        if l2.bias is None:
            l2.bias = nn.Parameter(add.clone())
        else:
            l2.bias.add_(add)
        out[a] = float(c.sum())
    return out


def _phi(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _Phi(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def relu_moments(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``relu(N(mu, sigma^2))``: ``E = mu Phi(a) + sigma phi(a)``,
    ``E[x^2] = (mu^2 + sigma^2) Phi(a) + mu sigma phi(a)`` with ``a = mu / sigma``.

    Example:
        >>> m, v = relu_moments(torch.tensor([0.0]), torch.tensor([1.0]))
        >>> round(float(m), 4), round(float(v), 4)   # 1/sqrt(2 pi), 1/2 - 1/(2 pi)
        (0.3989, 0.3408)
    """
    return clipped_moments(mu, sigma, 0.0, math.inf)


def clipped_moments(mu: torch.Tensor, sigma: torch.Tensor, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``clamp(N(mu, sigma^2), lo, hi)`` (ReLU: ``[0, inf)``, ReLU6: ``[0, 6]``)."""
    sigma = sigma.clamp_min(1e-12)
    a, b = (lo - mu) / sigma, (hi - mu) / sigma
    pa, pb = _Phi(a), (_Phi(b) if math.isfinite(hi) else torch.ones_like(a))
    fa, fb = _phi(a), (_phi(b) if math.isfinite(hi) else torch.zeros_like(a))
    mid = pb - pa  # mass inside [lo, hi]
    # inside part: E[x 1{lo<x<hi}] = mu*mid + sigma*(fa - fb); E[x^2 1{..}] = (mu^2+s^2)*mid + s*((lo+mu) fa - (hi+mu) fb)
    e1 = mu * mid + sigma * (fa - fb) + lo * pa + (hi * (1 - pb) if math.isfinite(hi) else 0.0)
    hi_term = (hi + mu) * fb if math.isfinite(hi) else torch.zeros_like(a)
    e2 = (mu * mu + sigma * sigma) * mid + sigma * ((lo + mu) * fa - hi_term) + lo * lo * pa + (hi * hi * (1 - pb) if math.isfinite(hi) else 0.0)
    return e1, (e2 - e1 * e1).clamp_min(0)

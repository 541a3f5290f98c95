"""Unstructured magnitude pruning: masks, scopes, schedules (Han et al. 2015; Zhu & Gupta 2017).

A pruned layer keeps its float weight as ``weight_orig`` and a 0/1 ``weight_mask`` buffer;
``weight = weight_orig * weight_mask`` is recomputed before every forward (``torch.nn.utils.prune``),
so the gradient of a pruned weight is zero and fine-tuning never revives it. :func:`remove_masks`
makes the zeros permanent (a plain ``weight`` again) for saving / export.

Magnitude criterion, for a selected set of weights and a sparsity ``s``: remove the
``k = round(s * n)`` entries of smallest ``|w|``, per layer (``layer`` scope, ``n`` the layer's size)
or over all selected layers at once (``global`` scope, one threshold). Masks are computed on the
effective weights, so an already pruned weight (0) stays pruned: the schedules only add zeros.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     _ = lin.weight.copy_(torch.tensor([[0.1, -2.0, 0.3, 4.0], [-0.5, 0.6, -0.05, 1.0]]))
    >>> masks = magnitude_masks({"fc": lin.weight}, 0.5)
    >>> masks["fc"].int().tolist()
    [[0, 1, 0, 1], [0, 1, 0, 1]]
    >>> [round(gradual_sparsity(t, 100, 0.8), 4) for t in (0, 50, 100)]
    [0.0, 0.7, 0.8]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ...errors import ConfigError
from .config import check_ratio

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of the float Conv1d / Conv2d / Linear layers (in module order).

    Example:
        >>> prunable_layers(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1)))
        ['0', '2']
    """
    return [n for n, m in model.named_modules() if type(m) in PRUNABLE]


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str = "layer",
                    sparsities: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Boolean keep-masks removing the smallest-magnitude weights.

    ``layer`` scope: layer ``l`` loses ``round(s_l n_l)`` weights, ``s_l = sparsities.get(l, sparsity)``.
    ``global`` scope: the ``round(s N)`` smallest ``|w|`` over all layers together (``N = sum n_l``).

    Args:
        weights: ``{name: weight tensor}`` (effective weights: already pruned entries are 0).
        sparsity: fraction removed, ``[0, 1)``.
        scope: ``layer`` or ``global``.
        sparsities: per-layer overrides (``layer`` scope only).

    Returns:
        ``{name: bool tensor of the weight's shape}``, True = kept.

    Example:
        >>> w = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 20.0])}
        >>> {k: v.int().tolist() for k, v in magnitude_masks(w, 0.5, "global").items()}
        {'a': [0, 0, 0, 1], 'b': [1, 1]}
    """
    check_ratio("sparsity", sparsity)
    sparsities = dict(sparsities or {})
    if scope == "layer":
        out = {}
        for name, w in weights.items():
            s = check_ratio(f"sparsity of {name}", sparsities.get(name, sparsity))
            k = int(round(s * w.numel()))
            mask = torch.ones(w.numel(), dtype=torch.bool)
            if k:
                mask[torch.argsort(w.detach().abs().reshape(-1), stable=True)[:k]] = False
            out[name] = mask.reshape(w.shape)
        return out
    if scope != "global":
        raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}")
    if sparsities:
        raise ConfigError("per-layer sparsities need scope 'layer'")
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    k = int(round(sparsity * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k:
        keep[torch.argsort(flat, stable=True)[:k]] = False
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start:start + w.numel()].reshape(w.shape)
        start += w.numel()
    return out


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Attach (or update) ``weight_mask`` on each named layer: ``weight = weight_orig * mask`` from now on.

    Example:
        >>> lin = torch.nn.Linear(2, 1)
        >>> apply_masks(torch.nn.Sequential(lin), {"0": torch.tensor([[True, False]])})
        >>> lin.weight[0, 1].item() == 0
        True
    """
    for name, mask in masks.items():
        m = model.get_submodule(name)
        if hasattr(m, "weight_mask"):
            m.weight_mask.copy_(mask.to(m.weight_mask.dtype))
            m.weight = m.weight_orig * m.weight_mask  # refresh now, not only at the next forward
        else:
            torch_prune.custom_from_mask(m, "weight", mask.to(m.weight.dtype))


def masked_layers(model: nn.Module) -> list[str]:
    """Names of the layers that carry a pruning mask."""
    return [n for n, m in model.named_modules() if hasattr(m, "weight_mask") and hasattr(m, "weight_orig")]


def remove_masks(model: nn.Module) -> None:
    """Make every mask permanent: ``weight`` becomes a plain parameter holding the zeros.

    Example:
        >>> seq = torch.nn.Sequential(torch.nn.Linear(2, 1))
        >>> apply_masks(seq, {"0": torch.tensor([[True, False]])}); remove_masks(seq)
        >>> hasattr(seq[0], "weight_mask"), seq[0].weight[0, 1].item() == 0
        (False, True)
    """
    for name in masked_layers(model):
        torch_prune.remove(model.get_submodule(name), "weight")


def layer_sparsity(model: nn.Module, names: list[str] | None = None) -> dict:
    """Fraction of zero weights per layer and over them all (``"total"``).

    Example:
        >>> seq = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = seq[0].weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        >>> layer_sparsity(seq)
        {'layers': {'0': 0.75}, 'zeros': 3, 'weights': 4, 'total': 0.75}
    """
    names = prunable_layers(model) if names is None else names
    per, zeros, n = {}, 0, 0
    for name in names:
        w = model.get_submodule(name).weight.detach()
        z = int((w == 0).sum())
        per[name] = z / w.numel()
        zeros += z
        n += w.numel()
    return {"layers": per, "zeros": zeros, "weights": n, "total": zeros / max(1, n)}


def gradual_sparsity(step: int, total: int, final: float, ramp: float = 1.0, initial: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule: ``s_t = s_f + (s_i - s_f) (1 - t / T)^3`` for ``t < T = ramp * total``,
    then ``s_f``. Prunes fast while redundancy is high and slowly near the end.

    Example:
        >>> [round(gradual_sparsity(t, 10, 0.9, ramp=0.5), 4) for t in (0, 1, 4, 5, 9)]
        [0.0, 0.4392, 0.8928, 0.9, 0.9]
    """
    horizon = max(1, int(round(ramp * total)))
    if step >= horizon:
        return final
    return final + (initial - final) * (1 - step / horizon) ** 3


def effective_weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """``{name: current weight}`` (masked where a mask exists)."""
    out = {}
    for name in names:
        m = model.get_submodule(name)
        out[name] = (m.weight_orig * m.weight_mask).detach() if hasattr(m, "weight_mask") else m.weight.detach()
    return out


def prune_to(model: nn.Module, names: list[str], sparsity: float, scope: str, sparsities: dict[str, float] | None = None) -> None:
    """One magnitude-pruning step: masks for ``sparsity`` (overrides scaled by ``sparsity / final``
    are the caller's business) computed on the effective weights and applied."""
    apply_masks(model, magnitude_masks(effective_weights(model, names), sparsity, scope, sparsities))


def schedule_hook(model: nn.Module, names: list[str], *, final: float, schedule: str, scope: str,
                  sparsities: dict[str, float] | None, steps: int = 3, ramp: float = 0.75,
                  update_every: int = 50) -> Callable[[int, int], None] | None:
    """A :func:`lowbit.train` ``step_hook`` that raises the sparsity during fine-tuning.

    ``iterative``: ``steps`` equal rounds ``s_f i / steps`` at evenly spaced steps (the first at step 0).
    ``gradual``: :func:`gradual_sparsity` every ``update_every`` steps. Per-layer overrides follow the
    same fraction of their own final value. ``oneshot`` returns None (the masks are already final).
    """
    if schedule == "oneshot":
        return None
    overrides = dict(sparsities or {})

    def at(frac: float) -> None:
        prune_to(model, names, final * frac, scope, {k: v * frac for k, v in overrides.items()} or None)

    state = {"done": -1.0}

    def hook(step: int, total: int) -> None:
        if schedule == "iterative":
            frac = min(steps, 1 + (step * steps) // max(1, total)) / steps
        else:
            if step % update_every and step != int(round(ramp * total)):
                return
            frac = gradual_sparsity(step, total, 1.0, ramp) if final > 0 else 1.0
        if frac > state["done"]:
            at(frac)
            state["done"] = frac

    return hook

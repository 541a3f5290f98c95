"""Structured (channel) pruning: importance criteria, coupled channel groups, physical removal.

Channels are coupled: a residual add ties the output channels of every layer feeding it (and the
inputs of every layer reading it); a depthwise conv ties its input and output channels to the
expand conv before it. torch-pruning's dependency graph finds these **groups**; lowbit scores each
group's channels, chooses how many to drop and lets the graph remove them everywhere at once, so
the result is an ordinary, smaller ``nn.Module`` (fewer channels in Conv / BN / Linear).

Importance of output channel ``c`` of a layer (``a`` its activation: the output of the BatchNorm
that follows the layer, or the layer's own output when none does; ``N`` images, ``HW`` positions):

* ``l1`` — ``sum |W[c]|`` (Li et al. 2017);
* ``apoz`` — ``1 - P(relu(a_c) = 0)``, one minus the average percentage of zeros (Hu et al. 2016);
* ``entropy`` — entropy of the histogram (32 bins) over images of the pooled ``mean_HW relu(a_c)``
  (Luo & Wu 2017): a channel that says the same for every image carries no information;
* ``taylor`` — ``mean_N | mean_HW a_c dL/da_c |``, the first-order change of the loss when the channel
  is zeroed (Molchanov et al. 2017), ``L`` the cross-entropy on the labels.

Per layer the scores are divided by their mean; a group's score is the mean over its member layers
(those whose output channels it removes). ``layer`` scope drops the ``round(r C)`` lowest channels of
each group; ``mac_ratio`` finds one threshold ``t`` (bisection) so that dropping every channel whose
normalized score is below ``t`` (at most ``max_ratio`` of a group) leaves ``mac_ratio`` of the MACs.

Example:
    >>> import torch
    >>> conv = torch.nn.Conv2d(1, 3, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = conv.weight.copy_(torch.tensor([1.0, -3.0, 0.5]).reshape(3, 1, 1, 1))
    >>> l1_scores(conv).tolist()
    [1.0, 3.0, 0.5]
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, UnsupportedError
from ...report.metrics import layer_macs
from ..qat.trainer import minibatches, split_batch

GROUP_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BINS = 32


def l1_scores(layer: nn.Module) -> torch.Tensor:
    """``sum |W[c]|`` over everything but the output-channel axis (dim 0)."""
    return layer.weight.detach().abs().flatten(1).sum(1)


def _activation_points(model: nn.Module, names: list[str]) -> dict[str, str]:
    """``{layer: module whose output is the layer's activation}``: the BatchNorm right after it, if any."""
    from ...transform.graph import conv_bn_pairs, try_trace

    gm = try_trace(model, "channel importance")
    pairs = dict(conv_bn_pairs(gm)) if gm is not None else {}
    return {n: pairs.get(n, n) for n in names}


def activation_scores(model: nn.Module, names: list[str], criterion: str, data: Any, *, batches: int = 8,
                      transform_fn=None) -> dict[str, torch.Tensor]:
    """Data-driven channel scores (``apoz`` / ``entropy`` / ``taylor``) of the named layers, from at most
    ``batches`` batches of ``data`` (the model is run in eval mode; ``taylor`` back-propagates the
    cross-entropy, so the batches need labels).

    Example:
        >>> import torch
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = m[0].weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1)); _ = m[0].bias.zero_()
        >>> activation_scores(m, ["0"], "apoz", [torch.rand(4, 1, 3, 3) + 0.1])["0"].tolist()  # channel 1 is always <= 0
        [1.0, 0.0]
    """
    if criterion not in ("apoz", "entropy", "taylor"):
        raise ConfigError(f"activation criterion must be apoz, entropy or taylor, got {criterion!r}")
    if data is None:
        raise ConfigError(f"criterion {criterion!r} measures activations: pass data= (batches of images"
                          f"{', with labels' if criterion == 'taylor' else ''}), or use criterion l1")
    points = _activation_points(model, names)
    acc: dict[str, list] = {n: [] for n in names}
    images: dict[str, int] = dict.fromkeys(names, 0)  # taylor: images seen per layer
    hooks = []
    grads_needed = criterion == "taylor"

    def make_hook(layer: str):
        def hook(mod, inp, out):
            a = out if isinstance(out, torch.Tensor) else out[0]
            if grads_needed:
                def on_grad(g, a=a.detach()):
                    dims = tuple(range(2, a.dim()))
                    ag = (a * g).mean(dim=dims) if dims else a * g
                    acc[layer].append(ag.abs().sum(0))
                    images[layer] += a.shape[0]
                a.register_hook(on_grad)
                return
            r = torch.relu(a.detach())
            if criterion == "apoz":
                dims = (0, *range(2, r.dim()))
                acc[layer].append(torch.stack([(r > 0).float().sum(dims), torch.full((r.shape[1],), r.numel() / r.shape[1])]))
            else:
                acc[layer].append(r.mean(dim=tuple(range(2, r.dim()))) if r.dim() > 2 else r)
        return hook

    mods = dict(model.named_modules())
    for layer, point in points.items():
        hooks.append(mods[point].register_forward_hook(make_hook(layer)))
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for i, batch in enumerate(minibatches(data, 128, shuffle=False, what="channel-importance data")[0]):
            if i >= batches:
                break
            x, y = split_batch(batch, transform_fn)
            if grads_needed:
                if y is None:
                    raise ConfigError("criterion 'taylor' back-propagates the loss: give (images, labels) batches")
                with torch.enable_grad():
                    model.zero_grad(set_to_none=True)
                    loss = nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    model(x)
            seen += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ConfigError("the data for channel importance is empty; pass at least one batch")
    out = {}
    for layer in names:
        parts = acc[layer]
        if criterion == "taylor":
            out[layer] = torch.stack(parts).sum(0) / images[layer]
        elif criterion == "apoz":
            s = torch.stack(parts).sum(0)
            out[layer] = s[0] / s[1]
        else:
            pooled = torch.cat(parts)  # (images, channels)
            out[layer] = torch.stack([_entropy(pooled[:, c]) for c in range(pooled.shape[1])])
    return out


def _entropy(v: torch.Tensor) -> torch.Tensor:
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return torch.tensor(0.0)
    p = torch.histc(v, bins=_BINS, min=lo, max=hi)
    p = p[p > 0] / v.numel()
    return -(p * p.log2()).sum()


def channel_scores(model: nn.Module, names: list[str], criterion: str, data: Any = None, *, batches: int = 8,
                   transform_fn=None) -> dict[str, torch.Tensor]:
    """Importance of every output channel of the named layers under ``criterion`` (module docstring).

    Example:
        >>> seq = torch.nn.Sequential(torch.nn.Linear(2, 3))
        >>> channel_scores(seq, ["0"], "l1")["0"].shape
        torch.Size([3])
    """
    if criterion == "l1":
        return {n: l1_scores(model.get_submodule(n)) for n in names}
    return activation_scores(model, names, criterion, data, batches=batches, transform_fn=transform_fn)


@dataclass
class ChannelGroup:
    """Coupled channels: removing channel ``i`` of ``root`` removes the matching channel of every member.

    Attributes:
        root: name of the layer the group is addressed by.
        size: number of channels.
        outs: layers whose output channels the group removes (their scores define the group's).
        ins: layers whose input channels it removes.
        depthwise: layers pruned along their groups (depthwise convs: MACs scale with the channels once).
    """

    root: str
    size: int
    outs: list[str] = field(default_factory=list)
    ins: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    handle: Any = None  # (module, pruning function) for the dependency graph


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def output_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Layers whose output is the model's output (their channels are the predictions: never pruned).

    Example:
        >>> output_layers(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)), torch.zeros(1, 3))
        ['2']
    """
    seen: dict[int, str] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(id(o), n))
             for n, m in model.named_modules() if isinstance(m, GROUP_LAYERS)]
    try:
        with torch.no_grad():
            out = model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, tuple | list) else (out,)
    return [seen[id(o)] for o in outs if id(o) in seen]


def channel_groups(model: nn.Module, example: torch.Tensor) -> tuple[Any, list[ChannelGroup]]:
    """The dependency graph of ``model`` and its prunable channel groups (one per set of coupled channels;
    groups that would prune an output layer are left out). Needs ``torch-pruning``.

    Example:
        >>> from lowbit.zoo.models import FmnistResNet
        >>> _, groups = channel_groups(FmnistResNet(width=8), torch.zeros(1, 1, 28, 28))
        >>> [(g.root, g.size) for g in groups][:2]
        [('stem.0', 8), ('layers.0.conv1', 8)]
    """
    try:
        import torch_pruning as tp
    except ImportError:  # pragma: no cover - an extra of the package
        raise UnsupportedError("structured pruning needs torch-pruning: pip install 'lowbit[compress]'") from None
    names = {m: n for n, m in model.named_modules()}
    outputs = output_layers(model, example)
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])
    except Exception as e:  # noqa: BLE001 - third-party tracer: report and stop
        raise UnsupportedError(f"the dependency graph of {type(model).__name__} could not be built ({type(e).__name__}: {e}); "
                               "structured pruning needs a model torch-pruning can trace") from None
    ignored = [model.get_submodule(n) for n in outputs]
    groups = []
    for g in dg.get_all_groups(ignored_layers=ignored, root_module_types=list(GROUP_LAYERS)):
        root_dep = g[0].dep
        cg = ChannelGroup(root=names.get(root_dep.target.module, "?"), size=len(g[0].idxs),
                          handle=(root_dep.target.module, root_dep.handler))
        for item in g:
            mod = item.dep.target.module
            if not isinstance(mod, GROUP_LAYERS) or mod not in names:
                continue
            fn = getattr(item.dep.handler, "__name__", "")
            name = names[mod]
            if _is_depthwise(mod):
                cg.depthwise.append(name)
            elif fn == "prune_out_channels":
                cg.outs.append(name)
            elif fn == "prune_in_channels":
                cg.ins.append(name)
        if any(o in outputs for o in cg.outs):
            continue
        groups.append(cg)
    order = {n: i for i, n in enumerate(names.values())}
    groups.sort(key=lambda c: order.get(c.root, 0))
    return dg, groups


def group_scores(groups: list[ChannelGroup], scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per group: the mean over its scored member layers of ``score / mean(score)``."""
    out = {}
    for g in groups:
        members = [n for n in g.outs + g.depthwise if n in scores and scores[n].numel() == g.size]
        if not members:
            out[g.root] = torch.ones(g.size)
            continue
        out[g.root] = torch.stack([scores[n] / scores[n].mean().clamp_min(1e-12) for n in members]).mean(0)
    return out


def _keep_count(size: int, drop_frac: float, max_ratio: float, round_to: int) -> int:
    drop = min(int(math.floor(drop_frac * size + 1e-9)), int(math.floor(max_ratio * size)))
    keep = size - drop
    if round_to > 1:
        keep = max(round_to, int(math.ceil(keep / round_to)) * round_to)
    return max(1, min(size, keep))


def pruned_macs(base: dict[str, int], model: nn.Module, groups: list[ChannelGroup], keep: dict[str, int]) -> int:
    """MACs per sample after keeping ``keep[root]`` channels of each group (counted analytically from
    each layer's kept input / output fractions; depthwise convs scale once)."""
    f_out = {n: 1.0 for n in base}
    f_in = {n: 1.0 for n in base}
    for g in groups:
        frac = keep.get(g.root, g.size) / g.size
        for n in g.outs + g.depthwise:
            f_out[n] = frac
        for n in g.ins:
            f_in[n] = frac
    total = 0.0
    for n, macs in base.items():
        m = model.get_submodule(n)
        total += macs * f_out[n] * (1.0 if _is_depthwise(m) else f_in[n])
    return int(round(total))


LATENCY_PROBES = 3  # latency measurements per candidate plan (their median counts)


def plan_keep(model: nn.Module, groups: list[ChannelGroup], gscores: dict[str, torch.Tensor], base_macs: dict[str, int], *,
              ratio: float, ratios: dict[str, float], mac_ratio: float | None, max_ratio: float, round_to: int,
              latency_ratio: float | None = None, measure: Callable[[dict[str, int]], float] | None = None) -> dict[str, int]:
    """Channels kept per group: fixed ratios (``layer`` scope), or the global threshold bisected so that the pruned
    model keeps ``mac_ratio`` of the MACs (counted) or ``latency_ratio`` of the latency (``measure(keep)`` times a
    pruned copy on the runtime: 12 bisection steps).

    Latency probes are noisy (on a small shared VM one probe can be off by 0.1), and a bisection on single probes
    both wanders and keeps the plan that happened to measure low. So every distinct plan (channel counts are
    rounded, many thresholds give the same plan) is measured ``LATENCY_PROBES`` times and its median is cached;
    the chosen plan is measured afresh the same way, and while that misses the budget the threshold moves an
    eighth of the remaining way towards the most pruned plan (at most 4 times) — a nudge, not a jump to the floor.
    """
    if mac_ratio is None and latency_ratio is None:
        return {g.root: _keep_count(g.size, ratios.get(g.root, ratio), max_ratio, round_to) for g in groups}
    total = sum(base_macs.values())

    def keep_at(t: float) -> dict[str, int]:
        return {g.root: _keep_count(g.size, float((gscores[g.root] < t).float().mean()), max_ratio, round_to) for g in groups}

    if mac_ratio is not None:
        target, what, steps = mac_ratio, "MACs", 60

        def cost(keep: dict[str, int]) -> float:
            return pruned_macs(base_macs, model, groups, keep) / total
    else:
        if measure is None:
            raise ConfigError("a latency_ratio budget needs a latency measurement (lowbit.prune measures it on ONNX Runtime)")
        target, what, steps = latency_ratio, "latency", 12
        seen: dict[tuple, float] = {}

        def median_probe(keep: dict[str, int]) -> float:
            return statistics.median(measure(keep) for _ in range(LATENCY_PROBES))

        def cost(keep: dict[str, int]) -> float:
            key = tuple(sorted(keep.items()))
            if key not in seen:
                seen[key] = median_probe(keep)
            return seen[key]
    hi = max(float(s.max()) for s in gscores.values()) + 1.0
    floor = cost(keep_at(hi))
    if floor > target:
        raise ConfigError(f"{what} ratio {target} is out of reach: with at most max_ratio={max_ratio} of each group's channels "
                          f"removed the model keeps {floor:.3f} of its {what}; raise max_ratio or the ratio")
    lo, top = 0.0, hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        if cost(keep_at(mid)) > target:
            lo = mid
        else:
            hi = mid
    if what == "latency":
        # the bisection keeps the plan that happened to measure low (a winner's curse): measure the choice afresh
        # and nudge towards the most pruned plan until a fresh median holds the budget
        for _ in range(4):
            if median_probe(keep_at(hi)) <= target:
                break
            hi = hi + (top - hi) / 8
    return keep_at(hi)


def remove_channels(model: nn.Module, dg: Any, groups: list[ChannelGroup], gscores: dict[str, torch.Tensor],
                    keep: dict[str, int]) -> dict[str, list[int]]:
    """Remove the lowest-scoring ``size - keep`` channels of every group in place; returns the removed indices."""
    removed = {}
    for g in groups:
        k = keep.get(g.root, g.size)
        if k >= g.size:
            continue
        idxs = sorted(torch.argsort(gscores[g.root], stable=True)[: g.size - k].tolist())
        module, fn = g.handle
        group = dg.get_pruning_group(module, fn, idxs=idxs)
        if not dg.check_pruning_group(group):
            raise UnsupportedError(f"removing {len(idxs)} of {g.size} channels of {g.root} would leave a layer without channels")
        group.prune()
        removed[g.root] = idxs
    return removed


def example_from(data: Any, example: torch.Tensor | None, transform_fn=None) -> torch.Tensor:
    """One input batch: ``example`` if given, else the first batch of ``data``."""
    if example is not None:
        return example
    if data is None:
        raise ConfigError("structured pruning traces the model: pass example= (one input batch) or data=")
    for batch in minibatches(data, 128, shuffle=False, what="data")[0]:
        return split_batch(batch, transform_fn)[0]
    raise ConfigError("the data is empty; pass at least one batch")


def model_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Total Conv / Linear MACs per sample."""
    return sum(layer_macs(model, example).values())


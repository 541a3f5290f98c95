"""The pruning verb: ``lowbit.prune(model, config, data)`` — prune, fine-tune (optionally distilled from
the unpruned model), report. Also the per-layer sensitivity scan that guides per-layer ratios.

Example:
    >>> import torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> m = lowbit.prune(FmnistMLP(), lowbit.PruneConfig(sparsity=0.9, scope="global"))
    >>> round(m.lowbit_info["sparsity"]["total"], 3)
    0.9
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, UnsupportedError
from ...report.metrics import layer_macs
from ...transform import select_layers
from .config import PruneConfig, StructuredPruneConfig, _FineTune, check_ratio
from .structured import (
    channel_groups,
    channel_scores,
    example_from,
    group_scores,
    model_macs,
    output_layers,
    plan_keep,
    pruned_macs,
    remove_channels,
)
from .unstructured import layer_sparsity, prunable_layers, prune_to, remove_masks, schedule_hook


def _fine_tune(model: nn.Module, config: _FineTune, data: Any, teacher: nn.Module | None, *, val_data: Any, transform_fn,
               progress: bool, step_hook: Callable[[int, int], None] | None = None) -> dict | None:
    if config.epochs == 0:
        return None
    if data is None:
        raise ConfigError(f"the config fine-tunes for {config.epochs} epoch(s): pass data= (training batches or a lowbit dataset), "
                          "or set epochs: 0")
    from ..qat.trainer import train

    return train(model, data, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, teacher=teacher,
                 temperature=config.temperature, distill_weight=config.distill_weight, val_data=val_data,
                 transform_fn=transform_fn, progress=progress, step_hook=step_hook)


def _targets(model: nn.Module, config: _FineTune) -> list[str]:
    candidates = prunable_layers(model)
    if not candidates:
        raise UnsupportedError(f"{type(model).__name__} has no Conv1d / Conv2d / Linear layer to prune")
    return select_layers(model, candidates, config.layers, config.exclude)


def prune(model: nn.Module, config: PruneConfig | StructuredPruneConfig, data: Any = None, *, example: torch.Tensor | None = None,
          val_data: Any = None, transform_fn: Callable | None = None, progress: bool = True) -> nn.Module:
    """Prune ``model`` in place as ``config`` says, fine-tune it on ``data`` (``config.epochs``), and return it
    with ``model.lowbit_info`` (per-layer sparsity or channels, MACs before / after, training history).

    * :class:`PruneConfig` — unstructured magnitude masks (``oneshot`` / ``iterative`` / ``gradual``), made
      permanent at the end (plain zero weights: save them sparsely with :func:`lowbit.save_compressed`).
    * :class:`StructuredPruneConfig` — whole channels removed from the graph (``example`` or the first batch
      of ``data`` traces it); the returned model has fewer channels.

    With ``config.distill`` the unpruned model (a copy taken first) is the teacher during fine-tuning.

    Raises:
        ConfigError: bad config, no data where fine-tuning or a data-driven criterion needs it.
        SelectorError: a ``layers`` / ``exclude`` selector matches nothing.
        UnsupportedError: nothing to prune; a selected layer whose channels cannot be removed
            (``on_unprunable: error``); a model the dependency graph cannot trace.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, PruneConfig | StructuredPruneConfig):
        raise ConfigError(f"lowbit.prune takes a PruneConfig or StructuredPruneConfig, got {type(config).__name__}")
    t0 = time.perf_counter()
    teacher = copy.deepcopy(model).eval() if config.distill and config.epochs else None
    if isinstance(config, PruneConfig):
        info = _prune_unstructured(model, config, data, teacher, val_data=val_data, transform_fn=transform_fn, progress=progress)
    else:
        info = _prune_structured(model, config, data, teacher, example=example, val_data=val_data, transform_fn=transform_fn,
                                 progress=progress)
    info["seconds"] = time.perf_counter() - t0
    info["config"] = config.to_dict()
    model.lowbit_info = info
    return model


def _prune_unstructured(model: nn.Module, config: PruneConfig, data: Any, teacher: nn.Module | None, *, val_data: Any,
                        transform_fn, progress: bool) -> dict:
    names = _targets(model, config)
    unknown = sorted(set(config.sparsities) - set(names))
    if unknown:
        raise ConfigError(f"sparsities name layers that are not pruned here: {unknown}; pruned layers are {names}")
    hook = schedule_hook(model, names, final=config.sparsity, schedule=config.schedule, scope=config.scope,
                         sparsities=config.sparsities or None, steps=config.steps, ramp=config.ramp, update_every=config.update_every)
    if hook is None:
        prune_to(model, names, config.sparsity, config.scope, config.sparsities or None)
    history = _fine_tune(model, config, data, teacher, val_data=val_data, transform_fn=transform_fn, progress=progress, step_hook=hook)
    if hook is not None:  # make sure the final sparsity holds even if the run was shorter than the ramp
        prune_to(model, names, config.sparsity, config.scope, config.sparsities or None)
    remove_masks(model)
    sp = layer_sparsity(model, names)
    params = sum(p.numel() for p in model.parameters())
    return {"method": "magnitude", "scope": config.scope, "schedule": config.schedule, "layers": names, "sparsity": sp,
            "parameters": params, "nonzero_parameters": params - sp["zeros"], "train": history}


def _prune_structured(model: nn.Module, config: StructuredPruneConfig, data: Any, teacher: nn.Module | None, *,
                      example: torch.Tensor | None, val_data: Any, transform_fn, progress: bool) -> dict:
    x = example_from(data, example, transform_fn)
    names = _targets(model, config)
    outputs = output_layers(model, x)
    dg, groups = channel_groups(model, x)
    chosen = set(names)
    skipped, kept_groups = [], []
    explicit = set(names) if config.layers else set()
    for n in sorted(explicit & set(outputs)):
        why = "its output channels are the model's predictions"
        if config.on_unprunable == "error":
            raise UnsupportedError(f"layer {n} cannot be pruned: {why}; drop it from layers or set on_unprunable: skip")
        skipped.append({"layer": n, "why": why})
    for g in groups:
        members = g.outs + g.depthwise
        outside = [n for n in members if n not in chosen]
        if not outside:
            kept_groups.append(g)
            continue
        inside = [n for n in members if n in chosen]
        why = f"its channels are coupled with {outside} (residual add / depthwise), which are not selected"
        if inside and config.on_unprunable == "error" and (config.layers or config.exclude):
            raise UnsupportedError(f"layer(s) {inside} cannot be pruned alone: {why}; select the whole group {members}, "
                                   "or set on_unprunable: skip")
        if inside:
            skipped.append({"layer": g.root, "members": members, "why": why})
    unknown = sorted(set(config.ratios) - {g.root for g in kept_groups})
    if unknown:
        raise ConfigError(f"ratios name layers that do not address a prunable channel group: {unknown}; "
                          f"groups are addressed by {[g.root for g in kept_groups]}")
    if not kept_groups:
        raise UnsupportedError("no prunable channel group among the selected layers" + (f" (skipped: {skipped})" if skipped else ""))
    scored = sorted({n for g in kept_groups for n in g.outs + g.depthwise})
    scores = channel_scores(model, scored, config.criterion, data, batches=config.calib_batches, transform_fn=transform_fn)
    gscores = group_scores(kept_groups, scores)
    base = layer_macs(model, x)
    measure = _LatencyProbe(model, kept_groups, gscores, x, config.latency_batch) if config.latency_ratio is not None else None
    keep = plan_keep(model, kept_groups, gscores, base, ratio=config.ratio, ratios=config.ratios, mac_ratio=config.mac_ratio,
                     max_ratio=config.max_ratio, round_to=config.round_to, latency_ratio=config.latency_ratio,
                     measure=measure)
    planned = pruned_macs(base, model, kept_groups, keep)
    params_before = sum(p.numel() for p in model.parameters())
    removed = remove_channels(model, dg, kept_groups, gscores, keep)
    macs_after = model_macs(model, x)
    latency = None
    if measure is not None:  # the chosen plan, measured again with more repeats
        from ...report.bench import float_latency_ratio

        latency = float_latency_ratio(measure.original, model, x.expand(config.latency_batch, *x.shape[1:]).contiguous(), repeats=20)
    history = _fine_tune(model, config, data, teacher, val_data=val_data, transform_fn=transform_fn, progress=progress)
    macs_before = sum(base.values())
    return {"method": "structured", "criterion": config.criterion, "groups": [
        {"root": g.root, "channels": g.size, "kept": keep[g.root], "removed": removed.get(g.root, []), "layers": g.outs + g.depthwise,
         "readers": g.ins} for g in kept_groups], "skipped": skipped, "macs_before": macs_before, "macs_after": macs_after,
        "macs_planned": planned, "mac_ratio": macs_after / macs_before, "parameters_before": params_before,
        "parameters_after": sum(p.numel() for p in model.parameters()), "latency": latency, "train": history}


class _LatencyProbe:
    """``probe(keep)``: latency of a copy pruned to ``keep`` / the unpruned model's, on ONNX Runtime fp32 (one run,
    interleaved, median of 15 rounds of 4 calls)."""

    def __init__(self, model: nn.Module, groups, gscores, x: torch.Tensor, batch: int) -> None:
        self.original = copy.deepcopy(model).eval()
        self.gscores, self.x1 = gscores, x[:1]
        self.xb = x[:1].expand(batch, *x.shape[1:]).contiguous()
        self.roots = [g.root for g in groups]

    def __call__(self, keep: dict[str, int]) -> float:
        from ...report.bench import float_latency_ratio

        m = copy.deepcopy(self.original)
        dg, groups = channel_groups(m, self.x1)
        remove_channels(m, dg, [g for g in groups if g.root in self.roots], self.gscores, keep)
        return float_latency_ratio(self.original, m, self.xb, repeats=15, calls=4)["ratio"]


def pruning_sensitivity(model: nn.Module, data: Any, *, eval_data: Any = None, structured: bool = False, criterion: str = "l1",
                        ratios: tuple[float, ...] = (0.25, 0.5, 0.75), example: torch.Tensor | None = None,
                        transform_fn: Callable | None = None, progress: bool = True) -> dict:
    """Per-layer sensitivity scan: prune one layer (unstructured) or one channel group (``structured``) alone at
    each ratio, no fine-tuning, and measure the accuracy on ``eval_data`` (default: ``data``).

    Returns ``{"baseline": acc, "ratios": [...], "layers": {name: {ratio: acc}}, "params": {name: n}}`` — a
    flat curve marks a layer that can lose more (Han et al. 2015, Fig. 6; Li et al. 2017, Fig. 2).

    Example:
        >>> import torch
        >>> from lowbit.zoo.models import FmnistMLP
        >>> torch.manual_seed(0) and None
        >>> x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
        >>> r = pruning_sensitivity(FmnistMLP(), [(x, y)], ratios=(0.5,), progress=False)
        >>> sorted(r["layers"]), list(r["layers"]["fc1"])
        (['fc1', 'fc2'], [0.5])
    """
    from ...api import evaluate

    for r in ratios:
        check_ratio("sensitivity ratio", r)
    if not ratios:
        raise ConfigError("ratios must name at least one pruning ratio in [0, 1)")
    eval_data = data if eval_data is None else eval_data
    baseline = evaluate(model, eval_data, transform_fn=transform_fn)
    out: dict[str, Any] = {"baseline": baseline, "ratios": list(ratios), "layers": {}, "params": {}, "structured": structured}
    if structured:
        x = example_from(data, example, transform_fn)
        _, groups = channel_groups(copy.deepcopy(model), x)
        targets = [g.root for g in groups]
    else:
        targets = prunable_layers(model)
    from ..._progress import track

    it = track(targets, "sensitivity", total=len(targets)) if progress else targets
    for name in it:
        out["layers"][name] = {}
        for r in ratios:
            m = copy.deepcopy(model)
            if structured:
                cfg = StructuredPruneConfig(criterion=criterion, ratios={name: r}, ratio=0.0, max_ratio=max(0.95, r))
                prune(m, cfg, data, example=x, transform_fn=transform_fn, progress=False)
            else:
                prune_to(m, [name], r, "layer")
                remove_masks(m)
            out["layers"][name][r] = evaluate(m, eval_data, transform_fn=transform_fn)
        out["params"][name] = sum(p.numel() for p in model.get_submodule(name).parameters()) if not structured else None
    return out

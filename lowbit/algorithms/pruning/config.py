"""Pruning configs: ``PruneConfig`` (unstructured, weight masks) and ``StructuredPruneConfig`` (whole
channels removed from the graph). Both carry their fine-tuning schedule, so one recipe is the whole job.

Example:
    >>> cfg = PruneConfig.from_yaml("sparsity: 0.8\\nscope: global\\nschedule: gradual\\nepochs: 2")
    >>> cfg.kind, cfg.sparsity, PruneConfig.from_yaml(cfg.to_yaml()) == cfg
    ('prune', 0.8, True)
    >>> s = StructuredPruneConfig(mac_ratio=0.5, criterion="taylor")
    >>> s.kind, s.criterion, StructuredPruneConfig.from_yaml(s.to_yaml()) == s
    ('structured-prune', 'taylor', True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...config import Config, Select
from ...errors import ConfigError

SCOPES = ("layer", "global")
SCHEDULES = ("oneshot", "iterative", "gradual")
CRITERIA = ("l1", "apoz", "entropy", "taylor")
ON_UNPRUNABLE = ("error", "skip")


def check_ratio(name: str, v: Any, *, upper_open: bool = True) -> float:
    """A pruning ratio / sparsity must be a number in ``[0, 1)`` (1 would remove the whole layer).

    Example:
        >>> check_ratio("sparsity", 0.5)
        0.5
    """
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v < 1:
        raise ConfigError(f"{name} must be a number in [0, 1) (the fraction removed; 1 would delete the layer), got {v!r}")
    return float(v)


def _positive_int(name: str, v: Any, low: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")


@dataclass(frozen=True, kw_only=True)
class _FineTune(Config):
    """Fine-tuning after (or during) pruning, shared by both configs.

    Attributes:
        epochs: fine-tuning epochs (0: prune only).
        lr: Adam learning rate (cosine decay to 0).
        batch_size: minibatch size.
        distill: learn from the unpruned model's soft targets too (``T^2``-weighted KL + hard labels,
            :func:`lowbit.algorithms.distill.distillation_loss`).
        temperature / distill_weight: the distillation loss's ``T`` and soft-term weight.
        layers / exclude: selectors of the layers to prune (empty ``layers``: every Conv / Linear).
        description: one line shown by ``lowbit recipes``.
    """

    epochs: int = 0
    lr: float = 5e-4
    batch_size: int = 128
    distill: bool = False
    temperature: float = 4.0
    distill_weight: float = 0.7
    layers: tuple[Select, ...] = ()
    exclude: tuple[Select, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs, 0)
        _positive_int("batch_size", self.batch_size)
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float) or not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.distill, bool):
            raise ConfigError(f"distill must be true or false, got {self.distill!r}")
        if not (isinstance(self.temperature, int | float) and self.temperature > 0):
            raise ConfigError(f"temperature must be positive, got {self.temperature!r}")
        if not (isinstance(self.distill_weight, int | float) and 0 <= self.distill_weight <= 1):
            raise ConfigError(f"distill_weight must lie in [0, 1], got {self.distill_weight!r}")
        for name in ("layers", "exclude"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
            if not all(isinstance(s, Select) for s in getattr(self, name)):
                raise ConfigError(f"{name} must be a list of selectors (lowbit.Select or, in YAML, a name / {{regex: ...}})")

    @classmethod
    def _decode(cls, d: dict) -> Config:
        d = dict(d)
        d["layers"] = tuple(Select.from_dict(s) for s in d.get("layers", ()) or ())
        d["exclude"] = tuple(Select.from_dict(s) for s in d.get("exclude", ()) or ())
        return cls(**d)


def check_magnitude_fields(cfg: Any) -> None:
    """Validate (in place, frozen-safe) the magnitude-pruning fields a config shares with :class:`PruneConfig`:
    ``sparsity``, ``scope``, ``sparsities``, ``schedule`` (and that a schedule other than oneshot has epochs)."""
    object.__setattr__(cfg, "sparsity", check_ratio("sparsity", cfg.sparsity))
    if cfg.scope not in SCOPES:
        raise ConfigError(f"scope must be one of {list(SCOPES)}, got {cfg.scope!r}")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {cfg.schedule!r}")
    if not isinstance(cfg.sparsities, dict):
        raise ConfigError(f"sparsities must map layer names to sparsities, got {type(cfg.sparsities).__name__}")
    for k, v in cfg.sparsities.items():
        check_ratio(f"sparsities[{k!r}]", v)
    if cfg.sparsities and cfg.scope == "global":
        raise ConfigError("per-layer sparsities need scope: layer (a global threshold chooses every layer's sparsity itself)")
    if cfg.schedule != "oneshot" and cfg.epochs == 0:
        raise ConfigError(f"schedule {cfg.schedule!r} prunes while fine-tuning: set epochs >= 1 (or schedule: oneshot)")


@dataclass(frozen=True, kw_only=True)
class PruneConfig(_FineTune):
    """Unstructured magnitude pruning: a 0/1 mask per weight, the smallest ``|w|`` removed.

    Attributes (besides the fine-tuning ones):
        sparsity: fraction of the selected layers' weights set to zero, in ``[0, 1)``.
        scope: ``layer`` — every layer loses the same fraction; ``global`` — one magnitude threshold over
            all selected layers (layers with many small weights lose more, as Han et al.'s per-layer
            sensitivity choice tends to do).
        sparsities: per-layer overrides ``{name: sparsity}`` (``layer`` scope; e.g. from a sensitivity scan).
        schedule: ``oneshot`` — prune once, then fine-tune; ``iterative`` — ``steps`` equal sparsity steps, the
            first at the start and the others at evenly spaced epochs (Han et al. 2015's prune / retrain rounds);
            ``gradual`` — Zhu & Gupta's cubic ramp ``s_t = s_f (1 - (1 - t / T)^3)`` over the first
            ``ramp`` fraction of the fine-tuning steps, the mask recomputed every ``update_every`` steps.
        steps: iterative rounds (>= 1).
        ramp: fraction of the training steps over which ``gradual`` reaches the final sparsity, (0, 1].
        update_every: steps between two mask updates of the ``gradual`` schedule.
    """

    kind: ClassVar[str] = "prune"
    sparsity: float = 0.5
    scope: str = "layer"
    sparsities: dict = field(default_factory=dict)
    schedule: str = "oneshot"
    steps: int = 3
    ramp: float = 0.75
    update_every: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        check_magnitude_fields(self)
        _positive_int("steps", self.steps)
        _positive_int("update_every", self.update_every)
        if not (isinstance(self.ramp, int | float) and 0 < self.ramp <= 1):
            raise ConfigError(f"ramp must lie in (0, 1], got {self.ramp!r}")


@dataclass(frozen=True, kw_only=True)
class StructuredPruneConfig(_FineTune):
    """Structured pruning: whole output channels of Conv / Linear layers removed from the network (the
    layers that read them lose the matching input channels; residual adds couple channels, handled by the
    dependency graph), so the model really is smaller and faster.

    Attributes (besides the fine-tuning ones):
        criterion: channel importance — ``l1`` (filter L1 norm, Li et al. 2017), ``apoz`` (1 - average
            percentage of zeros after the ReLU, Hu et al. 2016), ``entropy`` (entropy of the channel's
            pooled activation over images, Luo & Wu 2017), ``taylor`` (``|E[a dL/da]|``, the first-order
            loss change of removing it, Molchanov et al. 2017). The last three need data.
        ratio: fraction of each selected layer's output channels removed (``layer`` scope), ``[0, 1)``.
        mac_ratio: instead of ``ratio``: the pruned model's MACs / the original's (whole model), ``(0, 1)``;
            one importance threshold over all layers (scores normalized per layer) is found by bisection.
        latency_ratio: instead of ``ratio`` / ``mac_ratio``: the pruned model's latency / the original's on ONNX
            Runtime (fp32, ``latency_batch`` images, this machine), ``(0, 1)``: the same threshold bisected on
            latencies measured for each candidate (hardware in the loop: MACs do not predict latency well —
            early high-resolution layers cost more time per MAC).
        latency_batch: batch size of the latency measurement.
        ratios: per-layer overrides ``{name: ratio}`` (e.g. from :func:`lowbit.pruning_sensitivity`).
        max_ratio: no layer loses more than this fraction of its channels (keeps the graph alive).
        round_to: channel counts kept are multiples of this (SIMD-friendly), >= 1.
        calib_batches: batches of data used for the data-driven criteria.
        on_unprunable: a selected layer whose channels cannot be removed (they feed the output, or a
            grouped conv couples them in a way the graph cannot follow): ``error`` (default) or ``skip``
            (it is kept whole and listed in the info's ``skipped``).
    """

    kind: ClassVar[str] = "structured-prune"
    criterion: str = "l1"
    ratio: float = 0.3
    mac_ratio: float | None = None
    latency_ratio: float | None = None
    latency_batch: int = 32
    ratios: dict = field(default_factory=dict)
    max_ratio: float = 0.8
    round_to: int = 1
    calib_batches: int = 8
    on_unprunable: str = "error"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.criterion not in CRITERIA:
            raise ConfigError(f"criterion must be one of {list(CRITERIA)}, got {self.criterion!r}")
        object.__setattr__(self, "ratio", check_ratio("ratio", self.ratio))
        object.__setattr__(self, "max_ratio", check_ratio("max_ratio", self.max_ratio))
        if self.mac_ratio is not None:
            if isinstance(self.mac_ratio, bool) or not isinstance(self.mac_ratio, int | float) or not 0 < self.mac_ratio < 1:
                raise ConfigError(f"mac_ratio must lie in (0, 1) (pruned MACs / original MACs), got {self.mac_ratio!r}")
            if self.ratios:
                raise ConfigError("give either mac_ratio (one global threshold) or per-layer ratios, not both")
        if self.latency_ratio is not None:
            if isinstance(self.latency_ratio, bool) or not isinstance(self.latency_ratio, int | float) or not 0 < self.latency_ratio < 1:
                raise ConfigError(f"latency_ratio must lie in (0, 1) (pruned latency / original latency), got {self.latency_ratio!r}")
            if self.ratios or self.mac_ratio is not None:
                raise ConfigError("give one budget: latency_ratio, mac_ratio or per-layer ratios")
        _positive_int("latency_batch", self.latency_batch)
        if not isinstance(self.ratios, dict):
            raise ConfigError(f"ratios must map layer names to ratios, got {type(self.ratios).__name__}")
        for k, v in self.ratios.items():
            check_ratio(f"ratios[{k!r}]", v)
        _positive_int("round_to", self.round_to)
        _positive_int("calib_batches", self.calib_batches)
        if self.on_unprunable not in ON_UNPRUNABLE:
            raise ConfigError(f"on_unprunable must be one of {list(ON_UNPRUNABLE)}, got {self.on_unprunable!r}")

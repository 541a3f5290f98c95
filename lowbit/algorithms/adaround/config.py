"""``AdaRoundConfig``: PTQ whose weight rounding is learned layer by layer (Nagel et al., 2020).

Every :class:`~lowbit.algorithms.ptq.PTQConfig` field keeps its meaning (the same layers are
swapped for the same quantizers); the fields below only steer the rounding optimization that runs
after calibration (see :mod:`lowbit.algorithms.adaround.refine` for the math).

Example:
    >>> from lowbit.algorithms.adaround import AdaRoundConfig
    >>> cfg = AdaRoundConfig.from_yaml('''
    ... kind: adaround
    ... weight: {bits: 4, granularity: per_channel, observer: mse}
    ... iters: 200
    ... ''')
    >>> cfg.weight.bits, cfg.iters, AdaRoundConfig.from_yaml(cfg.to_yaml()) == cfg
    (4, 200, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ...errors import ConfigError
from ..ptq.config import PTQConfig


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True, kw_only=True)
class AdaRoundConfig(PTQConfig):
    """PTQ + AdaRound: per layer, choose up or down for every weight to reconstruct the layer's float output.

    Attributes:
        iters: optimization steps per layer.
        lr: Adam learning rate of the rounding variables ``V``.
        reg_weight: ``lambda``, weight of the rounding regularizer ``sum(1 - |2 h(V) - 1|^beta)``.
        beta_start, beta_end: the regularizer's exponent, annealed linearly from ``beta_start``
            (only values near 0.5 are pushed) to ``beta_end`` (every value is pushed to 0 or 1)
            after the warm-up; ``beta_start >= beta_end > 0``.
        warmup: fraction of ``iters`` run on the reconstruction loss alone (regularizer off), in ``[0, 1)``.
        batch_size: calibration samples drawn (with a seeded generator) per step.
        min_samples_warn: warn (naming the number) when fewer calibration samples reach the refiner;
            ``0`` disables the warning.
        seed: seed of the per-step sample draws (the result is deterministic for a given seed).
        activation_in_loss: when the only reader of a layer's output is an elementwise activation
            (ReLU, ReLU6, ... — found in the fx graph), compare outputs after it (the paper's eq. 25):
            errors the activation erases cost nothing.

    Every PTQConfig field (``weight``, ``activation``, ``overrides``, ``calib_size``, ...) is inherited.
    ``weight`` must not be ``None``: AdaRound rounds weights.
    """

    kind: ClassVar[str] = "adaround"
    iters: int = 1000
    lr: float = 1e-2
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    batch_size: int = 32
    min_samples_warn: int = 256
    seed: int = 0
    activation_in_loss: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight is None:
            raise ConfigError("AdaRoundConfig needs a weight quantizer (weight is None); AdaRound learns how weights are rounded")
        if self.weight.rounding != "nearest_even" or self.weight.dynamic:
            raise ConfigError(f"AdaRound learns the rounding of every weight, so the weight spec's rounding must be the default "
                              f"nearest_even and static (got rounding {self.weight.rounding!r}, dynamic {self.weight.dynamic})")
        if not _is_int(self.iters) or self.iters < 1:
            raise ConfigError(f"iters must be a positive integer (optimization steps per layer), got {self.iters!r}")
        if not _is_real(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a positive finite number, got {self.lr!r}")
        if not _is_real(self.reg_weight) or self.reg_weight < 0:
            raise ConfigError(f"reg_weight must be a finite number >= 0, got {self.reg_weight!r}")
        for name in ("beta_start", "beta_end"):
            v = getattr(self, name)
            if not _is_real(v) or v <= 0:
                raise ConfigError(f"{name} must be a positive finite number, got {v!r}")
        if self.beta_start < self.beta_end:
            raise ConfigError(
                f"beta_start ({self.beta_start}) must be >= beta_end ({self.beta_end}): beta is annealed from high to low"
            )
        if not _is_real(self.warmup) or not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup must be a fraction of iters in [0, 1), got {self.warmup!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not _is_int(self.min_samples_warn) or self.min_samples_warn < 0:
            raise ConfigError(f"min_samples_warn must be an integer >= 0, got {self.min_samples_warn!r}")
        if not isinstance(self.activation_in_loss, bool):
            raise ConfigError(f"activation_in_loss must be true or false, got {self.activation_in_loss!r}")
        if not _is_int(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        for name in ("lr", "reg_weight", "beta_start", "beta_end", "warmup"):  # YAML `lr: 1` is an int
            object.__setattr__(self, name, float(getattr(self, name)))

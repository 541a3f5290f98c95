"""``IterativeConfig``: PTQ specs plus the schedule of iterative adaptation to quantization noise.

Example:
    >>> from lowbit.algorithms.iterative import IterativeConfig
    >>> cfg = IterativeConfig.from_yaml('''
    ... weight: {bits: 4, granularity: per_channel, observer: mse}
    ... activation: {bits: 4, signed: false, mapping: affine, observer: mse}
    ... granularity: block
    ... epochs_per_step: 2
    ... lr: 1.0e-4
    ... ''')
    >>> cfg.kind, cfg.granularity, cfg.epochs_per_step, cfg.lr
    ('iterative', 'block', 2, 0.0001)
    >>> IterativeConfig.from_yaml(cfg.to_yaml()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...errors import ConfigError
from ..ptq import PTQConfig

GRANULARITIES = ("layer", "block")
OPTIMIZERS = ("adam", "sgd")
LOSSES = ("mse",)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True)
class IterativeConfig(PTQConfig):
    """Iterative adaptation to quantization noise (Chudakov et al., 2021) on top of PTQ.

    The layers, specs and calibration are PTQConfig's; afterwards the network is quantized one
    *step* at a time in execution order, and after each step the still-float later layers are
    trained to bring the network's output back to the float network's (see
    :mod:`lowbit.algorithms.iterative`).

    Attributes:
        granularity: what one step quantizes: ``layer`` (one quantized layer, with the residual
            adds / pooling quantizers that run after it and before the next layer) or ``block``
            (consecutive layers up to and including the next residual add, at most
            ``block_size`` layers).
        block_size: most quantized layers in one block (``granularity: block`` on models without
            residual adds, e.g. an MLP or a VGG, groups layers ``block_size`` at a time).
        epochs_per_step: passes over the calibration inputs that train the later layers after each step.
        final_epochs: passes that train every layer with all quantizers on (straight-through
            gradients, learning rate decaying from ``lr`` along a half cosine) after the last
            step; 0 (default) keeps the pure layer-freezing scheme.
        lr: learning rate of the optimizer (constant within each step).
        batch_size: calibration samples per optimizer step.
        optimizer: ``adam`` or ``sgd`` (momentum 0.9).
        recalibrate: after each step, re-observe the ranges of the activation quantizers not yet
            enabled on the partially quantized network (their inputs changed: earlier layers now
            carry quantization noise and later layers were trained).
        loss: ``mse`` — mean squared error between the network's outputs (logits) and the float network's.
        seed: seed of the minibatch order.

    ``calib_size`` bounds the unlabeled inputs used for calibration *and* training; the shipped
    iterative recipes use 2048.
    """

    kind: ClassVar[str] = "iterative"
    granularity: str = "block"
    block_size: int = 4
    epochs_per_step: int = 3
    final_epochs: int = 0
    lr: float = 2e-4
    batch_size: int = 64
    optimizer: str = "adam"
    recalibrate: bool = True
    loss: str = "mse"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity must be one of {list(GRANULARITIES)}, got {self.granularity!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        for name, low in (("block_size", 1), ("epochs_per_step", 0), ("final_epochs", 0), ("batch_size", 1), ("seed", 0)):
            v = getattr(self, name)
            if not _is_int(v) or v < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
        if not _is_number(self.lr) or not self.lr > 0 or self.lr == float("inf"):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr!r}")
        if not isinstance(self.recalibrate, bool):
            raise ConfigError(f"recalibrate must be true or false, got {self.recalibrate!r}")

    @classmethod
    def _decode(cls, d: dict) -> IterativeConfig:
        d = dict(d)
        # YAML 1.1 reads ``1e-4`` (no dot) as a string; accept it as the number it spells
        if isinstance(d.get("lr"), str):
            try:
                d["lr"] = float(d["lr"])
            except ValueError:
                raise ConfigError(f"lr must be a positive number, got {d['lr']!r}") from None
        return super()._decode(d)

"""``ZeroQConfig``: PTQ calibrated on inputs distilled from the model's own BatchNorm statistics.

Example:
    >>> cfg = ZeroQConfig.from_yaml("weight: {bits: 4}\\nsamples: 64\\niters: 20")
    >>> cfg.kind, cfg.samples, cfg.input_shape, ZeroQConfig.from_yaml(cfg.to_yaml()) == cfg
    ('zeroq', 64, (1, 28, 28), True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...errors import ConfigError
from ..ptq import PTQConfig


@dataclass(frozen=True, kw_only=True)
class ZeroQConfig(PTQConfig):
    """Attributes (besides :class:`~lowbit.PTQConfig`'s):
        samples: number of distilled inputs (they become the calibration set).
        iters: Adam steps per batch of distilled inputs.
        lr: Adam learning rate on the inputs.
        batch_size: inputs optimized together (BN statistics are batch statistics).
        input_shape: shape of one input (without the batch dimension).
        seed: random seed of the initial Gaussian inputs.
        fine_tune_epochs: after calibration, passes of distillation fine-tuning on the distilled
            inputs (quantized layers' weights trained toward the float model's outputs,
            :func:`lowbit.algorithms.iterative.finetune_to_float`); 0 (default) = plain PTQ.
        fine_tune_lr: its initial learning rate (half-cosine decay).

    ZeroQ needs a static activation quantizer: the distilled inputs exist to calibrate activation
    ranges (weight-only or dynamic-activation schemes need no data at all; use ``kind: ptq``).
    """

    kind: ClassVar[str] = "zeroq"
    samples: int = 256
    iters: int = 300
    lr: float = 0.2
    batch_size: int = 64
    input_shape: tuple[int, ...] = (1, 28, 28)
    seed: int = 0
    fine_tune_epochs: int = 0
    fine_tune_lr: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("samples", "iters", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "fine_tune_lr"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not v > 0:
                raise ConfigError(f"{name} must be positive, got {v!r}")
        v = self.fine_tune_epochs
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"fine_tune_epochs must be an integer >= 0, got {v!r}")
        if self.activation is None or self.activation.dynamic:
            raise ConfigError("ZeroQ distills inputs to calibrate static activation ranges, but this config has "
                              f"{'no activation quantizer' if self.activation is None else 'dynamic activations'}; "
                              "use kind: ptq (it needs no data), or give a static activation spec")
        shape = tuple(self.input_shape)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ConfigError(f"input_shape must be positive integers (without the batch dimension), got {self.input_shape!r}")
        object.__setattr__(self, "input_shape", shape)

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
    """

    kind: ClassVar[str] = "zeroq"
    samples: int = 256
    iters: int = 300
    lr: float = 0.2
    batch_size: int = 64
    input_shape: tuple[int, ...] = (1, 28, 28)
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("samples", "iters", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr!r}")
        shape = tuple(self.input_shape)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ConfigError(f"input_shape must be positive integers (without the batch dimension), got {self.input_shape!r}")
        object.__setattr__(self, "input_shape", shape)

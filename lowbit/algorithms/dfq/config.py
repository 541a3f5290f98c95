"""``DFQConfig``: data-free quantization (Nagel et al. 2019) on top of PTQ.

Example:
    >>> cfg = DFQConfig.from_yaml("weight: {bits: 4, granularity: per_tensor}\\nbias_correction: analytic")
    >>> cfg.kind, cfg.weight.bits, cfg.equalize, DFQConfig.from_yaml(cfg.to_yaml()) == cfg
    ('dfq', 4, True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...errors import ConfigError
from ..ptq import PTQConfig

BIAS_CORRECTIONS = ("none", "analytic", "empirical")
ACT_CALIBRATIONS = ("bn", "data")


@dataclass(frozen=True, kw_only=True)
class DFQConfig(PTQConfig):
    """PTQ preceded by cross-layer equalization and high-bias absorption, followed by bias correction.

    Attributes (besides :class:`~lowbit.PTQConfig`'s):
        relu6_to_relu: replace ``nn.ReLU6`` modules by ``nn.ReLU`` so equalization can pass them (as the
            paper does for MobileNetV2; changes the float function slightly — the info reports it).
        equalize: cross-layer equalization of conv / linear pairs.
        absorb_bias: high-bias absorption for pairs through ReLU (needs BatchNorm statistics).
        bias_correction: ``analytic`` (expected input from BatchNorm statistics, no data),
            ``empirical`` (expected input measured on the calibration data) or ``none``.
        activation_calibration: ``bn`` — activation ranges from BatchNorm statistics propagated
            through the graph (no data at all) — or ``data`` (the usual observers on calibration data).
        input_range: the model input's value range, for ``bn`` calibration (your preprocessing:
            ``[0, 1]`` for Fashion-MNIST tensors).
        n_sigma: the ``beta - n_sigma * gamma`` bound of high-bias absorption.
    """

    kind: ClassVar[str] = "dfq"
    relu6_to_relu: bool = True
    equalize: bool = True
    absorb_bias: bool = True
    bias_correction: str = "analytic"
    activation_calibration: str = "bn"
    input_range: tuple[float, float] = (0.0, 1.0)
    n_sigma: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bias_correction not in BIAS_CORRECTIONS:
            raise ConfigError(f"bias_correction must be one of {list(BIAS_CORRECTIONS)}, got {self.bias_correction!r}")
        if self.activation_calibration not in ACT_CALIBRATIONS:
            raise ConfigError(f"activation_calibration must be one of {list(ACT_CALIBRATIONS)}, got {self.activation_calibration!r}")
        r = tuple(self.input_range)
        if len(r) != 2 or not r[0] < r[1]:
            raise ConfigError(f"input_range must be [low, high] with low < high, got {self.input_range!r}")
        object.__setattr__(self, "input_range", (float(r[0]), float(r[1])))
        if not self.n_sigma > 0:
            raise ConfigError(f"n_sigma must be positive, got {self.n_sigma!r}")
        if self.weight is None:
            raise ConfigError("data-free quantization equalizes and corrects weights: set a weight quantizer")

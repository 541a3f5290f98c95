"""``PTQConfig``: which layers, which weight / activation quantizers, per-layer overrides.

Example:
    >>> from lowbit import PTQConfig
    >>> cfg = PTQConfig.from_yaml('''
    ... weight: {bits: 4, granularity: per_channel}
    ... activation: {bits: 8, signed: false, mapping: affine, observer: mse}
    ... overrides:
    ...   - {select: {position: first}, weight: {bits: 8}}
    ... ''')
    >>> cfg.weight.bits, cfg.overrides[0].weight.bits, PTQConfig.from_yaml(cfg.to_yaml()) == cfg
    (4, 8, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import GROUP_POLICIES, Config, Override, QuantSpec, Select
from ...errors import ConfigError
from ...quant import Affine, IntFormat, PerChannel, PerTensor, Symmetric

DEFAULT_WEIGHT = QuantSpec(format=IntFormat(bits=8, signed=True), mapping=Symmetric(), granularity=PerChannel(axis=0))
DEFAULT_ACTIVATION = QuantSpec(format=IntFormat(bits=8, signed=False), mapping=Affine(), granularity=PerTensor(), observer="mse")


@dataclass(frozen=True, kw_only=True)
class PTQConfig(Config):
    """Post-training quantization.

    Attributes:
        weight: weight quantizer (``None``: weights stay float).
        activation: input-activation quantizer of every quantized layer and of residual adds
            (``None``: weight-only quantization).
        layers: selectors of the layers to quantize (empty: every Linear / Conv1d / Conv2d).
        exclude: selectors of layers to keep in float.
        overrides: per-layer specs, applied in order (later wins).
        fold_bn: fold BatchNorm into the preceding conv / linear first.
        quantize_adds: capture functional residual adds and average pooling with torch.fx and quantize
            them (per tensor) as integer runtimes execute them.
        add_activation: the spec of those adds / pools (``None``: the base ``activation`` spec). Very
            low-bit recipes keep the residual sums at 8 bits (W2A2 with 2-bit sums loses the shortcut's
            information: measured -0.64 pp on fmnist-resnet W2A2 QAT, docs/RESULTS.md).
        group_policy: per-group weights whose group size does not divide a layer's input
            channels: ``error`` (default), ``ignore`` (keep that layer float) or ``adjust``
            (largest divisor of the channel count below the group size).
        calib_size: number of calibration samples drawn from ``data``.
        description: one line shown by ``lowbit recipes``.
    """

    kind: ClassVar[str] = "ptq"
    weight: QuantSpec | None = DEFAULT_WEIGHT
    activation: QuantSpec | None = DEFAULT_ACTIVATION
    layers: tuple[Select, ...] = ()
    exclude: tuple[Select, ...] = ()
    overrides: tuple[Override, ...] = ()
    fold_bn: bool = True
    quantize_adds: bool = True
    add_activation: QuantSpec | None = None
    group_policy: str = "error"
    calib_size: int = 512
    description: str = ""

    def __post_init__(self) -> None:
        if self.weight is None and self.activation is None:
            raise ConfigError("PTQConfig needs a weight or an activation quantizer (both are None)")
        if self.add_activation is not None and not isinstance(self.add_activation, QuantSpec):
            raise ConfigError(f"add_activation must be a QuantSpec or None, got {type(self.add_activation).__name__}")
        if self.group_policy not in GROUP_POLICIES:
            raise ConfigError(f"group_policy must be one of {list(GROUP_POLICIES)}, got {self.group_policy!r}")
        if not isinstance(self.calib_size, int) or self.calib_size < 1:
            raise ConfigError(f"calib_size must be a positive integer, got {self.calib_size!r}")
        for name in ("layers", "exclude", "overrides"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))

    @classmethod
    def _decode(cls, d: dict) -> PTQConfig:
        d = dict(d)
        for key in ("weight", "activation"):
            if key in d and d[key] is not None:
                d[key] = QuantSpec.from_dict(d[key], key)
        if isinstance(d.get("add_activation"), dict):  # a partial spec patches the activation spec
            merged = {**(d["activation"].to_dict() if d.get("activation") is not None else {}), **d["add_activation"]}
            d["add_activation"] = QuantSpec.from_dict(merged, "add_activation")
        d["layers"] = tuple(Select.from_dict(s) for s in d.get("layers", ()) or ())
        d["exclude"] = tuple(Select.from_dict(s) for s in d.get("exclude", ()) or ())
        raw_overrides = d.pop("overrides", ()) or ()
        base = cls(**d)
        overrides = tuple(Override.from_dict(o, base) for o in raw_overrides)
        return cls(**{**d, "overrides": overrides})

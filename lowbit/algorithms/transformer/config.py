"""``TransformerPTQConfig``: post-training quantization of the Linear (and embedding) layers of a transformer
with the methods built for them: round-to-nearest per channel / per group, GPTQ, AWQ, SmoothQuant, per-token
dynamic activations, and the most sensitive layers kept at a higher precision.

Example:
    >>> cfg = TransformerPTQConfig.from_yaml('''
    ... weight: {bits: 4, granularity: per_group, group_size: 128}
    ... method: gptq
    ... ''')
    >>> cfg.weight.bits, cfg.method, cfg.activation is None
    (4, 'gptq', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import GROUP_POLICIES, Config, Override, QuantSpec, Select
from ...errors import ConfigError
from ...quant import IntFormat, PerChannel, PerToken, Symmetric

INT8_PER_CHANNEL = QuantSpec(format=IntFormat(bits=8), mapping=Symmetric(), granularity=PerChannel(axis=0))
INT8_PER_TOKEN = QuantSpec(format=IntFormat(bits=8), mapping=Symmetric(), granularity=PerToken(), dynamic=True)
METHODS = ("rtn", "gptq", "awq")


@dataclass(frozen=True, kw_only=True)
class TransformerPTQConfig(Config):
    """Quantize a transformer's Linear layers (and its embedding tables) from a few hundred calibration texts.

    Attributes:
        weight: weight quantizer of every selected Linear (int8 per channel by default; W4 recipes use
            ``per_group`` with ``group_size`` 32 / 64 / 128).
        activation: input quantizer of every selected Linear: ``None`` (weight-only) or a *dynamic* spec —
            ``per_token`` (one scale per token, computed at run time) or ``per_tensor``.
        method: ``rtn`` (round to nearest on the observer's grid), ``gptq`` (Hessian-based error
            compensation, column by column) or ``awq`` (activation-aware per-input-channel scaling searched
            on the calibration inputs, then round to nearest).
        smooth_alpha: SmoothQuant migration strength ``alpha`` (``None``: off): every group of layers reading
            the same input gets ``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)``, the weights are multiplied
            by ``s`` and the input divided by it — folded into the LayerNorm that produces the input when there
            is one, else kept as the layer's ``smooth`` buffer. Applied before ``method``.
        embedding: quantizer of the embedding tables (``None``: float); weight-only.
        layers / exclude: selectors of the Linear layers to quantize (empty ``layers``: every Linear the
            calibration texts reach).
        overrides: per-layer specs (``weight: float`` keeps a layer float).
        keep_sensitive: keep the ``k`` Linear layers whose quantization alone changes the output most (scanned
            on the calibration data with this config's own quantizers) at ``sensitive_weight``.
        sensitive_weight: the spec of those layers (``None``: float).
        gptq_block / gptq_damp / act_order: GPTQ's lazy-update block, Hessian damping (fraction of the mean
            diagonal) and column order (decreasing Hessian diagonal).
        awq_grid: number of exponents ``alpha in [0, 1)`` AWQ tries for ``s = mean|X|^alpha``.
        group_policy: a group size that does not divide a layer's input features: ``error``, ``ignore``
            (keep that layer float) or ``adjust`` (largest divisor below it).
        calib_size: number of calibration texts (sequences).
        max_length: calibration texts are truncated to this many tokens.
    """

    kind: ClassVar[str] = "transformer-ptq"
    weight: QuantSpec = INT8_PER_CHANNEL
    activation: QuantSpec | None = None
    method: str = "rtn"
    smooth_alpha: float | None = None
    embedding: QuantSpec | None = INT8_PER_CHANNEL
    layers: tuple[Select, ...] = ()
    exclude: tuple[Select, ...] = ()
    overrides: tuple[Override, ...] = ()
    keep_sensitive: int = 0
    sensitive_weight: QuantSpec | None = INT8_PER_CHANNEL
    gptq_block: int = 128
    gptq_damp: float = 0.01
    act_order: bool = True
    awq_grid: int = 20
    group_policy: str = "error"
    calib_size: int = 128
    max_length: int = 128
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.weight, QuantSpec):
            raise ConfigError(f"weight must be a QuantSpec, got {type(self.weight).__name__}")
        if isinstance(self.weight.granularity, PerToken) or self.weight.dynamic:
            raise ConfigError("the weight quantizer cannot be dynamic / per_token; use per_channel or per_group")
        if self.activation is not None:
            if not isinstance(self.activation, QuantSpec):
                raise ConfigError(f"activation must be a QuantSpec or None, got {type(self.activation).__name__}")
            if not self.activation.dynamic:
                raise ConfigError("transformer activations are quantized dynamically (per token or per tensor at run time): "
                                  "set activation.dynamic: true (static activation grids: use kind ptq)")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.smooth_alpha is not None and not (isinstance(self.smooth_alpha, int | float) and 0.0 <= self.smooth_alpha <= 1.0):
            raise ConfigError(f"smooth_alpha must be in [0, 1] (SmoothQuant uses 0.5), got {self.smooth_alpha!r}")
        if self.group_policy not in GROUP_POLICIES:
            raise ConfigError(f"group_policy must be one of {list(GROUP_POLICIES)}, got {self.group_policy!r}")
        for name, lo in (("calib_size", 1), ("max_length", 2), ("gptq_block", 1), ("awq_grid", 1), ("keep_sensitive", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
        if not (isinstance(self.gptq_damp, int | float) and 0.0 < self.gptq_damp < 1.0):
            raise ConfigError(f"gptq_damp must be in (0, 1) (GPTQ uses 0.01), got {self.gptq_damp!r}")
        for name in ("layers", "exclude", "overrides"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))

    @classmethod
    def _decode(cls, d: dict) -> TransformerPTQConfig:
        d = dict(d)
        for key in ("weight", "activation", "embedding", "sensitive_weight"):
            if key in d and d[key] is not None:
                d[key] = QuantSpec.from_dict(d[key], key)
        d["layers"] = tuple(Select.from_dict(s) for s in d.get("layers", ()) or ())
        d["exclude"] = tuple(Select.from_dict(s) for s in d.get("exclude", ()) or ())
        raw_overrides = d.pop("overrides", ()) or ()
        base = cls(**d)
        return cls(**{**d, "overrides": tuple(Override.from_dict(o, base) for o in raw_overrides)})

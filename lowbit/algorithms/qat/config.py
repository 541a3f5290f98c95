"""``QATConfig``: quantization-aware training as two calls of the one verb.

``quantize_(model, QATConfig(..., step="prepare"), data=calib)`` builds the PTQ structure (BatchNorm
folded, layers swapped, activations calibrated) and swaps every quantizer for a trainable one
(:mod:`lowbit.nn.learned`); :func:`lowbit.train` trains it; ``quantize_(model,
cfg.replace(step="convert"))`` freezes the learned grids into a plain integer-deployable model.

Example:
    >>> cfg = QATConfig.from_yaml('''
    ... weight: {bits: 4, granularity: per_channel, observer: mse}
    ... activation: {bits: 4, signed: false, mapping: affine, observer: mse}
    ... weight_method: lsq
    ... activation_method: pact
    ... epochs: 2
    ... ''')
    >>> cfg.kind, cfg.step, cfg.weight_method, cfg.activation_method, cfg.replace(step="convert").step
    ('qat', 'prepare', 'lsq', 'pact', 'convert')
    >>> QATConfig.from_yaml(cfg.to_yaml()) == cfg
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

from ...errors import ConfigError
from ...nn.learned import ACTIVATION_METHODS, METHOD_BITS, WEIGHT_METHODS
from ..ptq import PTQConfig

STEPS = ("prepare", "convert")
OPTIMIZERS = ("adam", "sgd")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True, kw_only=True)
class QATConfig(PTQConfig):
    """Quantization-aware training (fake-quant forward, straight-through / learned-quantizer backward).

    Attributes (besides :class:`~lowbit.PTQConfig`'s, which define the grids and their initialization):
        step: ``prepare`` (build + calibrate + swap in trainable quantizers) or ``convert``
            (freeze them; the model must have been prepared).
        weight_method: ``ste`` | ``lsq`` | ``dorefa`` | ``dsq`` | ``bwn`` (binary, per-channel
            ``alpha``; XNOR-Net's weights) | ``binary`` (one ``alpha`` per layer) | ``twn`` | ``ttq`` |
            ``pot`` | ``shiftcnn`` | ``kmeans`` (:mod:`lowbit.nn.learned`). Binary methods need
            ``weight.bits: 1``, ternary ones 2; layers a recipe overrides to another width (the 8-bit
            first / last layers) use LSQ.
        activation_method: ``ste`` | ``lsq`` | ``pact`` | ``dorefa`` | ``dsq``. PACT and DoReFa clip to
            ``[0, alpha]``: quantizers whose calibrated range is not non-negative (the network input,
            a residual sum) use LSQ instead, listed in the prepare info.
        epochs, lr, batch_size, optimizer (``adam`` | ``sgd`` with Nesterov momentum 0.9),
        weight_decay: :func:`lowbit.train`'s defaults for this recipe (cosine learning-rate decay per step).
        train_size: training images the CLI draws (``None``: the whole training split).
        distill: train against the float model's soft targets too (:func:`lowbit.distillation_loss`).
        temperature: distillation temperature ``T``.
        distill_weight: ``a`` in ``a T^2 KL(p_T^teacher || p_T^student) + (1 - a) CE(student, y)``
            (1.0: soft targets only, no labels needed).
        pact_decay: L2 weight decay on PACT's ``alpha``.
        dsq_alpha: DSQ's ``alpha`` at the start and end of training (annealed geometrically).
        ttq_threshold: TTQ's ``t`` in ``Delta = t max|W|``.
        shiftcnn_terms: ShiftCNN's ``N`` (power-of-two terms per weight; ``weight.bits`` is ``B``).
        seed: shuffling seed.

    BatchNorm: folded into the preceding conv before training ("fold, then train"): the weights
    the quantizers see during training are the deployed ones, so there is no train/deploy
    mismatch and no BatchNorm statistics to freeze; the price is that there are no batch
    statistics to stabilize training, so learning rates are those of fine-tuning.
    """

    kind: ClassVar[str] = "qat"
    step: str = "prepare"
    weight_method: str = "lsq"
    activation_method: str = "lsq"
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 128
    optimizer: str = "adam"
    weight_decay: float = 0.0
    train_size: int | None = None
    distill: bool = False
    temperature: float = 4.0
    distill_weight: float = 0.9
    pact_decay: float = 1e-4
    dsq_alpha: tuple[float, float] = (0.2, 0.01)
    ttq_threshold: float = 0.05
    shiftcnn_terms: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step not in STEPS:
            raise ConfigError(f"step must be one of {list(STEPS)}, got {self.step!r}")
        if self.weight_method not in WEIGHT_METHODS:
            raise ConfigError(f"weight_method must be one of {list(WEIGHT_METHODS)}, got {self.weight_method!r}")
        allowed = METHOD_BITS.get(self.weight_method)
        if allowed and self.weight is not None and self.weight.bits not in allowed:
            raise ConfigError(f"weight_method {self.weight_method} supports weight bits {list(allowed)}, got {self.weight.bits}")
        if self.weight is None and self.weight_method != "lsq":
            raise ConfigError(f"weight_method {self.weight_method} needs a weight spec (weight is None)")
        if not _is_int(self.shiftcnn_terms) or not 1 <= self.shiftcnn_terms <= 8:
            raise ConfigError(f"shiftcnn_terms must be an integer in 1..8, got {self.shiftcnn_terms!r}")
        if not _is_real(self.ttq_threshold) or not 0 < self.ttq_threshold < 1:
            raise ConfigError(f"ttq_threshold must lie in (0, 1), got {self.ttq_threshold!r}")
        if self.activation_method not in ACTIVATION_METHODS:
            raise ConfigError(f"activation_method must be one of {list(ACTIVATION_METHODS)}, got {self.activation_method!r}")
        for spec, what in ((self.weight, "weight"), (self.activation, "activation")):
            if spec is not None and spec.dynamic:
                raise ConfigError(f"QAT trains fixed grids; a dynamic {what} spec has none (drop dynamic: true)")
            if spec is not None and spec.granularity.name == "per_group":
                raise ConfigError(f"QAT quantizers support per_tensor / per_channel {what}s, not per_group")
        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", None)):
            v = getattr(self, name)
            if not _is_int(v) or (low is not None and v < low):
                raise ConfigError(f"{name} must be an integer{f' >= {low}' if low is not None else ''}, got {v!r}")
        if self.train_size is not None and (not _is_int(self.train_size) or self.train_size < 1):
            raise ConfigError(f"train_size must be a positive integer or null, got {self.train_size!r}")
        for name in ("lr", "temperature"):
            v = getattr(self, name)
            if not _is_real(v) or v <= 0:
                raise ConfigError(f"{name} must be a positive finite number, got {v!r}")
        for name in ("weight_decay", "pact_decay"):
            v = getattr(self, name)
            if not _is_real(v) or v < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if not _is_real(self.distill_weight) or not 0 <= self.distill_weight <= 1:
            raise ConfigError(f"distill_weight must lie in [0, 1], got {self.distill_weight!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if not isinstance(self.distill, bool):
            raise ConfigError(f"distill must be true or false, got {self.distill!r}")
        a = tuple(self.dsq_alpha) if isinstance(self.dsq_alpha, list | tuple) else ()
        if len(a) != 2 or not all(_is_real(v) and 0 < v < 1 for v in a) or a[1] > a[0]:
            raise ConfigError(f"dsq_alpha must be [start, end] with 1 > start >= end > 0, got {self.dsq_alpha!r}")
        object.__setattr__(self, "dsq_alpha", (float(a[0]), float(a[1])))
        for name in ("lr", "temperature", "weight_decay", "pact_decay", "distill_weight", "ttq_threshold"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def needs_labels(self) -> bool:
        """Training needs labels unless it learns from the teacher's soft targets alone."""
        return not (self.distill and self.distill_weight == 1.0)

    @classmethod
    def wrap(cls, base: PTQConfig, **changes) -> QATConfig:
        """A QATConfig with ``base``'s PTQ fields (specs, overrides, layers...) and ``changes``.

        >>> from lowbit import load_recipe
        >>> QATConfig.wrap(load_recipe("w4a4"), weight_method="lsq").weight.bits
        4
        """
        ptq = {f.name: getattr(base, f.name) for f in fields(PTQConfig) if f.init}
        return cls(**{**ptq, **changes})

"""``DynamicConfig``: instance-aware dynamic quantization (Liu et al., CVPR 2022) as data.

``prepare(model, cfg, calib_data)`` builds the :class:`~lowbit.algorithms.dynamic.DynamicQuantModel`;
``train_dynamic(dyn, data, **cfg.train_kwargs())`` trains network and controller jointly;
``evaluate_dynamic(dyn, data)`` measures accuracy and the per-sample BitOPs.

Example:
    >>> cfg = DynamicConfig.from_yaml('''
    ... bits: [2, 3, 4, 5, 6]
    ... target_bitops: 0.5
    ... tau: [5.0, 0.5]
    ... epochs: 2
    ... ''')
    >>> cfg.kind, cfg.bits, cfg.target_bitops, cfg.tau
    ('dynamic', (2, 3, 4, 5, 6), 0.5, (5.0, 0.5))
    >>> DynamicConfig.from_yaml(cfg.to_yaml()) == cfg
    True
    >>> DynamicConfig(bits=(2, 4), target_bitops=0.2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lowbit.errors.ConfigError: target_bitops=0.2 is outside what the candidates [2, 4] can reach: [0.25, 1] of the BitOPs ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ...config import Config
from ...errors import ConfigError
from ...observe import OBSERVERS
from .layers import check_candidate_bits


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True, kw_only=True)
class DynamicConfig(Config):
    """Instance-aware dynamic quantization: per-sample widths from a learned bit controller.

    Attributes:
        bits: candidate widths ``b_1 < ... < b_K`` (weights and activations of a dynamic layer use the
            same candidate), integers in 1..16 (1: binary weights), at least two.
        target_bitops: the average BitOPs budget as a fraction of the static model with every dynamic
            layer at ``b_K`` (in (0, 1]); at least ``(b_1 / b_K)^2``, and on a real model at least
            what the fixed layers and the controller cost (:func:`prepare` checks the exact range).
        reg_weight: ``lambda`` in ``loss = task + lambda (E[BitOPs] / target - 1)^2``.
        tau: Gumbel-softmax temperature ``(start, end)``, annealed geometrically per step.
        noise: Gumbel-noise scale ``(start, end)``, annealed linearly per step (``(1, 0)``: training ends on
            the argmax choices inference takes; ``(1, 1)``: plain Gumbel-softmax throughout).
        hidden: hidden width of the controller's two-layer MLP; ``0``: no controller input, one learned
            choice per layer for every sample (static mixed precision from the same search, the baseline).
        grid: the controller pools the trunk's features over a ``grid x grid`` split of the image
            (1: global average; 2 keeps coarse position: ``C * 4`` inputs, 4x the first layer's MACs).
        trunk: module names of the trunk (the controller's input; run at ``fixed_bits``); ``None``:
            the first conv block.
        fixed_bits: width of the trunk's layers and of the classifier (2..16).
        observer: observer that initializes every candidate's steps (``mse``, ``minmax``, ...).
        epochs, lr, batch_size: training (Adam, half-cosine learning-rate decay per step).
        controller_lr: the controller's learning rate (``None``: ``10 * lr``; the network is fine-tuned,
            the controller trained from scratch).
        distill: learn from the float model's soft targets too (:func:`lowbit.distillation_loss`).
        temperature, distill_weight: distillation ``T`` and ``a`` (as in :class:`~lowbit.QATConfig`).
        calib_size: calibration samples for the steps' initialization.
        seed: shuffling and Gumbel-noise seed.
        description: one line shown by ``lowbit recipes``.
    """

    kind: ClassVar[str] = "dynamic"
    bits: tuple[int, ...] = (2, 3, 4, 5, 6)
    target_bitops: float = 0.5
    reg_weight: float = 5.0
    tau: tuple[float, float] = (5.0, 0.5)
    noise: tuple[float, float] = (1.0, 0.0)
    hidden: int = 64
    grid: int = 1
    trunk: tuple[str, ...] | None = None
    fixed_bits: int = 8
    observer: str = "mse"
    epochs: int = 3
    lr: float = 1e-4
    controller_lr: float | None = None
    batch_size: int = 128
    distill: bool = False
    temperature: float = 4.0
    distill_weight: float = 0.9
    calib_size: int = 512
    seed: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        bits = check_candidate_bits(self.bits, "bits")
        if len(bits) < 2:
            raise ConfigError(f"bits must hold at least two candidate widths, got {list(bits)}; a single width is static "
                              "quantization (use QATConfig)")
        object.__setattr__(self, "bits", bits)
        t = self.target_bitops
        lo = (bits[0] / bits[-1]) ** 2
        if not _is_real(t) or not lo <= t <= 1:
            raise ConfigError(f"target_bitops={t!r} is outside what the candidates {list(bits)} can reach: [{lo:.4g}, 1] of the BitOPs "
                              f"of the static {bits[-1]}-bit model (all layers at {bits[0]} bits .. all at {bits[-1]} bits); the fixed "
                              "trunk / classifier and the controller raise the lower end on a real model (prepare checks it exactly)")
        if not _is_real(self.reg_weight) or self.reg_weight < 0:
            raise ConfigError(f"reg_weight must be a finite number >= 0, got {self.reg_weight!r}")
        tau = tuple(self.tau) if isinstance(self.tau, list | tuple) else ()
        if len(tau) != 2 or not all(_is_real(v) and v > 0 for v in tau) or tau[1] > tau[0]:
            raise ConfigError(f"tau must be [start, end] temperatures with start >= end > 0, got {self.tau!r}")
        object.__setattr__(self, "tau", (float(tau[0]), float(tau[1])))
        noise = tuple(self.noise) if isinstance(self.noise, list | tuple) else ()
        if len(noise) != 2 or not all(_is_real(v) and v >= 0 for v in noise):
            raise ConfigError(f"noise must be [start, end] Gumbel-noise scales >= 0, got {self.noise!r}")
        object.__setattr__(self, "noise", (float(noise[0]), float(noise[1])))
        if self.trunk is not None:
            tr = self.trunk
            if isinstance(tr, str) or not isinstance(tr, list | tuple) or not tr or not all(isinstance(n, str) and n for n in tr):
                raise ConfigError(f"trunk must be null or a non-empty list of module names (e.g. [stem, layers.0]), got {tr!r}")
            if len(set(tr)) != len(tr):
                raise ConfigError(f"trunk lists a module more than once: {list(tr)}")
            object.__setattr__(self, "trunk", tuple(tr))
        object.__setattr__(self, "fixed_bits", check_candidate_bits([self.fixed_bits], "fixed_bits", lowest=2)[0])
        if self.observer not in OBSERVERS:
            raise ConfigError(f"unknown observer {self.observer!r}; known: {sorted(OBSERVERS)}")
        if not _is_int(self.hidden) or self.hidden < 0:
            raise ConfigError(f"hidden must be a positive integer (or 0: one static choice for every input), got {self.hidden!r}")
        for name in ("grid", "epochs", "batch_size", "calib_size"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not _is_int(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        for name in ("lr", "temperature"):
            v = getattr(self, name)
            if not _is_real(v) or v <= 0:
                raise ConfigError(f"{name} must be a positive finite number, got {v!r}")
        if self.controller_lr is not None and (not _is_real(self.controller_lr) or self.controller_lr <= 0):
            raise ConfigError(f"controller_lr must be null or a positive finite number, got {self.controller_lr!r}")
        if not isinstance(self.description, str):
            raise ConfigError(f"description must be a string, got {self.description!r}")
        if not isinstance(self.distill, bool):
            raise ConfigError(f"distill must be true or false, got {self.distill!r}")
        if not _is_real(self.distill_weight) or not 0 <= self.distill_weight <= 1:
            raise ConfigError(f"distill_weight must lie in [0, 1], got {self.distill_weight!r}")
        for name in ("target_bitops", "reg_weight", "lr", "temperature", "distill_weight"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.controller_lr is not None:
            object.__setattr__(self, "controller_lr", float(self.controller_lr))

    def train_kwargs(self) -> dict:
        """Keyword arguments of :func:`~lowbit.algorithms.dynamic.train_dynamic` for this config
        (the teacher, when ``distill`` is on, is the caller's float model).

        >>> DynamicConfig(epochs=1).train_kwargs()["epochs"]
        1
        """
        return {"epochs": self.epochs, "lr": self.lr, "controller_lr": self.controller_lr, "batch_size": self.batch_size,
                "target_bitops": self.target_bitops, "reg_weight": self.reg_weight, "tau": self.tau, "noise": self.noise,
                "temperature": self.temperature, "distill_weight": self.distill_weight, "seed": self.seed}

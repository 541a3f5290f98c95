"""``DeepCompressionConfig``: the three-stage pipeline of Han et al. 2016 as one recipe.

Example:
    >>> cfg = DeepCompressionConfig.from_yaml("sparsity: 0.92\\nbits: 4\\nlayer_bits: {fc: 5}")
    >>> cfg.kind, cfg.sparsity, cfg.layer_bits, DeepCompressionConfig.from_yaml(cfg.to_yaml()) == cfg
    ('deep-compression', 0.92, {'fc': 5}, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from ...errors import ConfigError
from ..pruning.config import _FineTune, _positive_int, check_magnitude_fields


@dataclass(frozen=True, kw_only=True)
class DeepCompressionConfig(_FineTune):
    """Prune -> (fold BatchNorm) -> k-means weight sharing with centroid fine-tuning -> Huffman coding.

    Attributes (``epochs`` / ``lr`` / ``batch_size`` / ``distill`` / ``layers`` / ``exclude`` are the pruning
    stage's, as in :class:`~lowbit.PruneConfig`):
        sparsity / scope / sparsities / schedule: magnitude pruning (default: 90 % global, gradual).
        fold_bn: fold BatchNorms into the preceding layers after pruning, so only the (shared) weights and
            one bias per channel are stored; zeros stay zeros.
        bits: sharing index width per layer, ``2^bits`` values including the pruned zero (1..8).
        layer_bits: per-layer overrides ``{name: bits}`` (the paper: 8 for convs, 5 for FC on AlexNet).
        share_epochs / share_lr: centroid fine-tuning (gradient summed per cluster), 0 epochs = k-means only.
        coding: ``huffman`` or ``fixed`` for the stored indices (the last stage).
        index_bits: relative-index gap width (None: the smallest file, chosen per layer).
    """

    kind: ClassVar[str] = "deep-compression"
    epochs: int = 3
    sparsity: float = 0.9
    scope: str = "global"
    sparsities: dict = field(default_factory=dict)
    schedule: str = "gradual"
    fold_bn: bool = True
    bits: int = 4
    layer_bits: dict = field(default_factory=dict)
    share_epochs: int = 1
    share_lr: float = 1e-4
    coding: str = "huffman"
    index_bits: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_magnitude_fields(self)
        for name, b in [("bits", self.bits), *((f"layer_bits[{k!r}]", v) for k, v in dict(self.layer_bits).items())]:
            if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8:
                raise ConfigError(f"{name} must be an integer in 1..8 (2^bits shared values including the zero), got {b!r}")
        _positive_int("share_epochs", self.share_epochs, 0)
        if isinstance(self.share_lr, bool) or not isinstance(self.share_lr, int | float) or not (math.isfinite(self.share_lr) and self.share_lr > 0):
            raise ConfigError(f"share_lr must be a positive number, got {self.share_lr!r}")
        if self.coding not in ("huffman", "fixed"):
            raise ConfigError(f"coding must be huffman or fixed, got {self.coding!r}")
        if self.index_bits is not None:
            _positive_int("index_bits", self.index_bits)
            if self.index_bits > 8:
                raise ConfigError(f"index_bits must lie in 1..8, got {self.index_bits!r}")
        if not isinstance(self.fold_bn, bool):
            raise ConfigError(f"fold_bn must be true or false, got {self.fold_bn!r}")

"""``LowRankConfig``: low-rank decomposition of Linear / Conv2d layers (SVD, Tucker-2, CP) as data.

``decompose(model, cfg, example=x)`` replaces each selected layer by its factorization in place;
fine-tuning afterwards is the ordinary :func:`lowbit.train`.

Example:
    >>> cfg = LowRankConfig.from_yaml('''
    ... method: auto
    ... rank_by: budget
    ... mac_ratio: 0.4
    ... ranks: {fc: 4, layers.0.conv1: [8, 16]}
    ... exclude: [stem.0]
    ... ''')
    >>> cfg.kind, cfg.mac_ratio, cfg.ranks, cfg.exclude
    ('lowrank', 0.4, {'fc': 4, 'layers.0.conv1': (8, 16)}, ('stem.0',))
    >>> LowRankConfig.from_yaml(cfg.to_yaml()) == cfg
    True
    >>> LowRankConfig(energy=1.5)
    Traceback (most recent call last):
    ...
    lowbit.errors.ConfigError: energy=1.5 is outside (0, 1]: it is the fraction of the squared singular values each layer keeps (0.9 keeps 90 %); pick e.g. 0.9
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...config import Config
from ...errors import ConfigError

METHODS = ("auto", "svd", "tucker2", "cp")
RANK_BY = ("energy", "budget")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _names(field_name: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str) or not isinstance(v, list | tuple) or not all(isinstance(n, str) and n for n in v):
        raise ConfigError(f"{field_name} must be a list of layer names (e.g. [layers.0.conv1, fc]), got {v!r}")
    if len(set(v)) != len(v):
        raise ConfigError(f"{field_name} lists a layer more than once: {list(v)}")
    return tuple(v)


def _rank(name: str, v: Any) -> int | tuple[int, int]:
    if _is_int(v) and v >= 1:
        return v
    if isinstance(v, list | tuple) and len(v) == 2 and all(_is_int(r) and r >= 1 for r in v):
        return (v[0], v[1])
    raise ConfigError(f"ranks[{name!r}]={v!r} is not a rank: give a positive integer (SVD, CP; Tucker-2 uses it for both modes) "
                      "or [r_out, r_in] (Tucker-2 of a k x k conv)")


@dataclass(frozen=True, kw_only=True)
class LowRankConfig(Config):
    """Low-rank decomposition: which layers, which factorization, which rank.

    Attributes:
        method: the factorization of ``k x k`` convolutions (k > 1). ``auto`` / ``tucker2``: Tucker-2
            (1x1 -> k x k core -> 1x1); ``cp``: CP in Lebedev et al.'s form (1x1 -> depthwise k x 1 ->
            depthwise 1 x k -> 1x1); ``svd``: truncated SVD of the ``(C_out, C_in k k)``
            matricization (k x k conv to ``r`` channels -> 1x1). Linear layers and 1x1 convs always take
            truncated SVD: for a matrix, Tucker-2 and CP reduce to a low-rank product, of which the SVD is
            the optimal one (Eckart-Young).
        rank_by: ``energy`` — each layer keeps the smallest rank whose squared singular values reach
            ``energy`` of the total (Tucker-2: per mode, on the mode-0 / mode-1 unfoldings; CP: the
            smallest rank whose fit has ``1 - ||W - W_R||^2 / ||W||^2 >= energy``); ``budget`` — one global
            energy threshold, the largest for which the decomposed layers' MACs fit ``mac_ratio``.
        energy: fraction in (0, 1] of the energy kept (``rank_by: energy``).
        mac_ratio: in (0, 1): MACs of the selected layers after / before (``rank_by: budget``; a layer left
            as it is counts at its original MACs).
        ranks: explicit ranks ``{layer name: r}`` (Tucker-2 also ``[r_out, r_in]``; an integer is used for
            both modes). A named layer is decomposed even when ``layers`` does not list it.
        layers: names of the layers to decompose; empty: every Linear whose rank-1 factorization is
            cheaper (``in * out > in + out``) and every ``groups=1`` Conv2d with a kernel larger than 1x1 or
            at least 16 input channels — except the first layer the input reaches (its error propagates
            through the whole model; on fmnist-resnet at a 0.5 MAC budget, decomposing the stem drops the
            float-argmax agreement from 96 % to 38 %). Every layer the rule leaves out is reported.
        exclude: names never decomposed.
        skip_unprofitable: leave a layer whose chosen rank saves no MACs as it is (and report it); false:
            decompose it anyway (with a warning).
        hooi_iters: Tucker-2 HOOI refinement sweeps after the HOSVD initialization (0: plain HOSVD).
        cp_iters: maximum CP-ALS iterations per fit.
        cp_tol: CP-ALS stops when the relative reconstruction error changes by less than this.
        seed: random state of CP-ALS (its SVD initialization fills ranks beyond a mode's size randomly).
        description: one line shown by ``lowbit recipes``.
    """

    kind: ClassVar[str] = "lowrank"
    method: str = "auto"
    rank_by: str = "energy"
    energy: float = 0.9
    mac_ratio: float = 0.5
    ranks: dict = field(default_factory=dict)
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_unprofitable: bool = True
    hooi_iters: int = 3
    cp_iters: int = 200
    cp_tol: float = 1e-8
    seed: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {list(METHODS)}, got {self.method!r} (auto: SVD for Linear / 1x1 convs, "
                              "Tucker-2 for k x k convs)")
        if self.rank_by not in RANK_BY:
            raise ConfigError(f"rank_by must be one of {list(RANK_BY)}, got {self.rank_by!r}")
        if not _is_real(self.energy) or not 0 < self.energy <= 1:
            raise ConfigError(f"energy={self.energy!r} is outside (0, 1]: it is the fraction of the squared singular values each "
                              "layer keeps (0.9 keeps 90 %); pick e.g. 0.9")
        if not _is_real(self.mac_ratio) or not 0 < self.mac_ratio < 1:
            raise ConfigError(f"mac_ratio={self.mac_ratio!r} is outside (0, 1): it is the decomposed layers' MACs after / before "
                              "(0.5 halves them); pick e.g. 0.5")
        if not isinstance(self.ranks, dict) or not all(isinstance(k, str) and k for k in self.ranks):
            raise ConfigError(f"ranks must map layer names to ranks (e.g. {{fc: 8, layers.0.conv1: [16, 8]}}), got {self.ranks!r}")
        object.__setattr__(self, "ranks", {k: _rank(k, v) for k, v in self.ranks.items()})  # a copy: the caller's dict stays theirs
        object.__setattr__(self, "layers", _names("layers", self.layers))
        object.__setattr__(self, "exclude", _names("exclude", self.exclude))
        both = sorted(set(self.exclude) & (set(self.layers) | set(self.ranks)))
        if both:
            raise ConfigError(f"{both} both selected (layers / ranks) and excluded; remove them from one of the lists")
        if not isinstance(self.skip_unprofitable, bool):
            raise ConfigError(f"skip_unprofitable must be true or false, got {self.skip_unprofitable!r}")
        if not _is_int(self.hooi_iters) or self.hooi_iters < 0:
            raise ConfigError(f"hooi_iters must be an integer >= 0 (0: HOSVD only), got {self.hooi_iters!r}")
        if not _is_int(self.cp_iters) or self.cp_iters < 1:
            raise ConfigError(f"cp_iters must be a positive integer, got {self.cp_iters!r}")
        if not _is_real(self.cp_tol) or self.cp_tol < 0:
            raise ConfigError(f"cp_tol must be a finite number >= 0, got {self.cp_tol!r}")
        if not _is_int(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.description, str):
            raise ConfigError(f"description must be a string, got {self.description!r}")
        for name in ("energy", "mac_ratio", "cp_tol"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["ranks"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.ranks.items()}  # YAML has no tuples
        return d

"""Joint search of channel-pruning ratio and weight bit width per layer under a size, BitOPs or latency
budget (F19; APQ-style, simplified: measured per-layer sensitivities as the accuracy predictor, an exact
cost model, evolutionary search).

**Measure** (:func:`joint_sensitivity`): for every channel group ``g`` (coupled channels, see
:mod:`lowbit.algorithms.pruning.structured`) and ratio ``r``, the increase of the cross-entropy on
calibration batches when only ``g`` loses the fraction ``r`` of its channels (lowest importance first);
for every layer ``l`` and width ``b``, the ``loss`` sensitivity of :func:`~.sensitivity.layer_sensitivity`.

**Predict** a candidate ``(r_g for every group, b_l for every layer)``:

* accuracy cost ``sum_g P_g(r_g) + sum_l Q_l(b_l)`` (additive, as HAWQ / APQ's predictor assume);
* kept fractions: layer ``l`` keeps ``o_l = 1 - r`` of its output channels (its group's ``r``) and
  ``i_l`` of its inputs (the group it reads); its weights and MACs scale by ``o_l i_l`` (``o_l`` alone for
  a depthwise conv);
* ``size = sum_l n_l o_l i_l b_l / 8`` bytes (float = 32 bits), ``bitops = sum_l M_l o_l i_l b_l a_l``
  (``a_l = 8``, or 32 for a float layer);
* ``latency = sum_l o_l i_l t_l(b_l)`` with the measured :class:`~.latency.LatencyTable`: ``t_l(int8)`` is the
  all-int8 latency shared out in proportion to MACs, ``t_l(float)`` adds the layer's measured float extra.

**Search** (:func:`joint_search`): an evolutionary search (seeded) over the genes, infeasible candidates
penalised by their relative budget excess; the best feasible one is returned as a :class:`JointPlan`, whose
:meth:`~JointPlan.prune_config` and :meth:`~JointPlan.quant_config` are the ordinary configs that apply it.

Example:
    >>> rep = JointReport(groups={"g": {"outs": ["a"], "ins": ["b"], "depthwise": [], "size": 8}}, layers=["a", "b"],
    ...                   params={"a": 100, "b": 100}, macs={"a": 1000, "b": 1000}, ratios=(0.0, 0.5), bits=(4, 8),
    ...                   prune={"g": {0.0: 0.0, 0.5: 0.1}}, quant={"a": {4: 0.3, 8: 0.0}, "b": {4: 0.05, 8: 0.0}})
    >>> plan = joint_search(rep, {"size": 100})     # halving g's channels halves both layers: 100 bytes at 8 bits
    >>> plan.ratios, plan.bits, plan.predicted["size"] <= 100
    ({'g': 0.5}, {'a': 8, 'b': 8}, True)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError
from ..ptq import PTQConfig

FLOAT = 32
BUDGETS = ("size", "bitops", "latency")


@dataclass
class JointReport:
    """What the joint search needs: groups (``{root: {outs, ins, depthwise, size}}``), layers with their weight
    counts and MACs, the candidate ratios / widths, and the measured sensitivities ``prune[g][r]``,
    ``quant[l][b]`` (cross-entropy increase; larger = worse)."""

    groups: dict[str, dict]
    layers: list[str]
    params: dict[str, int]
    macs: dict[str, int]
    ratios: tuple[float, ...]
    bits: tuple[int, ...]
    prune: dict[str, dict[float, float]]
    quant: dict[str, dict[int, float]]
    depthwise: list[str] = field(default_factory=list)
    baseline_loss: float = 0.0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("groups", "layers", "params", "macs", "ratios", "bits", "prune", "quant", "depthwise",
                                              "baseline_loss")}


@dataclass
class JointPlan:
    """One ratio per channel group and one weight width per layer (32 = float), with the predicted costs."""

    ratios: dict[str, float]
    bits: dict[str, int]
    predicted: dict[str, float]
    budget: dict[str, float] = field(default_factory=dict)

    def prune_config(self, **finetune: Any):
        """The :class:`~lowbit.StructuredPruneConfig` that removes the planned channels (``finetune``: its
        ``epochs`` / ``lr`` / ``distill`` / ``round_to`` ...)."""
        from ..pruning import StructuredPruneConfig

        return StructuredPruneConfig(ratio=0.0, ratios={g: r for g, r in self.ratios.items() if r > 0}, max_ratio=0.95, **finetune)

    def quant_config(self, base: PTQConfig) -> PTQConfig:
        """``base`` with each layer's weight width from the plan (activations at ``base``'s width; a float
        layer stays float), as a bit-width :class:`~.search.Plan` writes it."""
        from .search import Plan

        act = FLOAT if base.activation is None else base.activation.format.bits
        pairs = {n: (b, FLOAT if b == FLOAT else act) for n, b in self.bits.items()}
        return Plan(bits=pairs, budget=dict(self.budget), estimator="joint").to_config(base)

    def to_dict(self) -> dict:
        return {"ratios": self.ratios, "bits": self.bits, "predicted": self.predicted, "budget": self.budget}


def _ce(model: nn.Module, batches: list) -> float:
    with torch.no_grad():
        tot = n = 0.0
        for x, y in batches:
            tot += float(nn.functional.cross_entropy(model(x), y, reduction="sum"))
            n += x.shape[0]
    return tot / max(1.0, n)


def joint_sensitivity(model: nn.Module, data: Any, *, ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75),
                      bits: tuple[int, ...] = (2, 4, 8), base: PTQConfig | None = None, criterion: str = "l1",
                      max_samples: int = 512, round_to: int = 1) -> JointReport:
    """Measure the pruning and quantization sensitivities of ``model`` (module docstring) on at most
    ``max_samples`` labelled samples of ``data``. ``base`` sets the quantizer kinds (default: the ``w8a8``
    recipe with 8-bit activations); ``32`` in ``bits`` adds the float option."""
    from ...recipes import load_recipe
    from ..pruning import StructuredPruneConfig, prune
    from ..pruning.config import check_ratio
    from ..pruning.structured import channel_groups
    from ..qat.trainer import minibatches, split_batch
    from .sensitivity import check_bits, layer_sensitivity

    ratios = tuple(sorted({0.0, *(check_ratio("joint ratio", r) for r in ratios)}))
    int_bits = check_bits([b for b in bits if b != FLOAT], "joint bits")
    all_bits = tuple(sorted(set(int_bits) | ({FLOAT} if FLOAT in bits else set())))
    base = load_recipe("w8a8") if base is None else base
    batches, seen = [], 0
    for batch in minibatches(data, 128, shuffle=False, what="sensitivity data")[0]:
        x, y = split_batch(batch)
        if y is None:
            raise ConfigError("the joint search measures the loss: give labelled (images, labels) batches")
        batches.append((x[: max_samples - seen], y[: max_samples - seen]))
        seen += batches[-1][0].shape[0]
        if seen >= max_samples:
            break
    if not batches:
        raise ConfigError("the sensitivity data is empty; pass at least one labelled batch")
    example = batches[0][0][:1]
    was = model.training
    model.eval()
    try:
        base_loss = _ce(model, batches)
        _, groups = channel_groups(copy.deepcopy(model), example)
        prune_s: dict[str, dict[float, float]] = {}
        for g in groups:
            prune_s[g.root] = {0.0: 0.0}
            for r in ratios[1:]:
                m = copy.deepcopy(model)
                prune(m, StructuredPruneConfig(criterion=criterion, ratio=0.0, ratios={g.root: r}, max_ratio=0.95, round_to=round_to),
                      batches, example=example, progress=False)
                prune_s[g.root][r] = _ce(m, batches) - base_loss
        rep = layer_sensitivity(model, base, batches, bits=int_bits, estimators=("loss",), max_samples=max_samples)
    finally:
        model.train(was)
    quant = {n: {int(b): float(v) for b, v in rep.weight["loss"][n].items()} for n in rep.layers}
    if FLOAT in all_bits:
        for n in quant:
            quant[n][FLOAT] = 0.0
    from ..pruning.structured import _is_depthwise

    depthwise = [n for n in rep.layers if _is_depthwise(model.get_submodule(n))]
    return JointReport(groups={g.root: {"outs": g.outs, "ins": g.ins, "depthwise": g.depthwise, "size": g.size} for g in groups},
                       layers=list(rep.layers), params=dict(rep.params), macs=dict(rep.macs), ratios=ratios, bits=all_bits,
                       prune=prune_s, quant=quant, depthwise=depthwise, baseline_loss=base_loss)


class _Costs:
    """Vectorised cost model over genomes ``(ratio index per group, bit index per layer)``."""

    def __init__(self, rep: JointReport, latency: Any = None, act_bits: int = 8) -> None:
        self.rep = rep
        self.groups = list(rep.groups)
        self.layers = list(rep.layers)
        li = {n: i for i, n in enumerate(self.layers)}
        self.out_g = np.full(len(self.layers), -1)
        self.in_g = np.full(len(self.layers), -1)
        for gi, g in enumerate(self.groups):
            for n in rep.groups[g]["outs"] + rep.groups[g]["depthwise"]:
                if n in li:
                    self.out_g[li[n]] = gi
            for n in rep.groups[g]["ins"]:
                if n in li:
                    self.in_g[li[n]] = gi
        self.dw = np.array([n in rep.depthwise for n in self.layers])
        self.ratios = np.array(rep.ratios)
        self.bits = np.array(rep.bits)
        self.params = np.array([rep.params[n] for n in self.layers], dtype=float)
        self.macs = np.array([rep.macs[n] for n in self.layers], dtype=float)
        self.act = np.array([FLOAT if b == FLOAT else act_bits for b in rep.bits], dtype=float)
        self.p_tab = np.array([[rep.prune[g].get(float(r), np.inf) for r in rep.ratios] for g in self.groups])
        self.q_tab = np.array([[rep.quant[n].get(int(b), np.inf) for b in rep.bits] for n in self.layers])
        self.latency = latency
        if latency is not None:
            missing = sorted(set(self.layers) - set(latency.layers))
            if missing:
                raise ConfigError(f"the latency table has no entry for layer(s) {missing[:4]}; measure it on this model")
            share = latency.int8_seconds * self.macs / self.macs.sum()
            extra = np.array([latency.layers[n] for n in self.layers])
            self.t_int8, self.t_float = share, share + extra

    def fractions(self, rg: np.ndarray) -> np.ndarray:
        """(population, layers) kept fraction of each layer's weights / MACs."""
        kept = 1.0 - self.ratios[rg]  # (P, G)
        ones = np.ones((rg.shape[0], 1))
        kg = np.concatenate([kept, ones], axis=1)  # index -1 -> 1.0
        o = kg[:, self.out_g]
        i = kg[:, self.in_g]
        return o * np.where(self.dw, 1.0, i)

    def evaluate(self, rg: np.ndarray, bg: np.ndarray) -> dict[str, np.ndarray]:
        f = self.fractions(rg)
        b = self.bits[bg].astype(float)
        out = {"size": (self.params * f * b / 8).sum(1), "bitops": (self.macs * f * b * self.act[bg]).sum(1),
               "loss": self.p_tab[np.arange(len(self.groups)), rg].sum(1) + self.q_tab[np.arange(len(self.layers)), bg].sum(1)}
        if self.latency is not None:
            t = np.where(self.bits[bg] == FLOAT, self.t_float, self.t_int8)
            out["latency"] = (t * f).sum(1)
        return out


def joint_search(rep: JointReport, budget: dict[str, float], *, latency: Any = None, population: int = 96, generations: int = 80,
                 mutation: float = 0.15, seed: int = 0) -> JointPlan:
    """The candidate with the smallest predicted loss within ``budget`` (``{"size": bytes}``, ``{"bitops": n}``,
    ``{"latency": seconds}`` with ``latency=`` a measured table, or several at once); see the module docstring.

    Raises:
        ConfigError: an unknown or non-positive budget, a latency budget without a table, no candidate
            within the budget (the message gives the smallest reachable cost).
    """
    if not budget:
        raise ConfigError(f"give at least one budget among {list(BUDGETS)}")
    for k, v in budget.items():
        if k not in BUDGETS:
            raise ConfigError(f"unknown budget {k!r}; known: {list(BUDGETS)}")
        if not (isinstance(v, int | float) and v > 0):
            raise ConfigError(f"budget {k} must be a positive number, got {v!r}")
    if "latency" in budget and latency is None:
        raise ConfigError("a latency budget needs a measured LatencyTable (lowbit latency MODEL, or measure_latency_table)")
    costs = _Costs(rep, latency)
    rng = np.random.default_rng(seed)
    G, L, R, B = len(costs.groups), len(costs.layers), len(rep.ratios), len(rep.bits)

    def score(rg, bg):
        c = costs.evaluate(rg, bg)
        excess = sum(np.maximum(0.0, c[k] / v - 1.0) for k, v in budget.items())
        return c["loss"] + 1e3 * excess, c, excess

    # seeds: the most / least compressed corners, then random genomes
    rg = rng.integers(0, R, (population, G))
    bg = rng.integers(0, B, (population, L))
    rg[0], bg[0] = 0, B - 1
    rg[1], bg[1] = R - 1, 0
    for _ in range(generations):
        s, _, _ = score(rg, bg)
        order = np.argsort(s, kind="stable")
        elite = population // 4
        prg, pbg = rg[order[:elite]], bg[order[:elite]]
        a, b = rng.integers(0, elite, population - elite), rng.integers(0, elite, population - elite)
        cross_r = rng.random((population - elite, G)) < 0.5
        cross_b = rng.random((population - elite, L)) < 0.5
        crg = np.where(cross_r, prg[a], prg[b])
        cbg = np.where(cross_b, pbg[a], pbg[b])
        mr = rng.random(crg.shape) < mutation
        mb = rng.random(cbg.shape) < mutation
        crg = np.where(mr, np.clip(crg + rng.choice([-1, 1], crg.shape), 0, R - 1), crg)
        cbg = np.where(mb, np.clip(cbg + rng.choice([-1, 1], cbg.shape), 0, B - 1), cbg)
        rg, bg = np.concatenate([prg, crg]), np.concatenate([pbg, cbg])
    s, c, excess = score(rg, bg)
    feasible = np.flatnonzero(excess == 0)
    if feasible.size == 0:
        lo = {k: float(costs.evaluate(np.full((1, G), R - 1), np.zeros((1, L), dtype=int))[k][0]) for k in budget}
        raise ConfigError(f"no candidate fits the budget {budget}; the most compressed one costs {lo} "
                          "(raise the budget, or allow larger ratios / smaller widths)")
    best = feasible[np.argmin(s[feasible])]
    plan = JointPlan(ratios={g: float(rep.ratios[rg[best, i]]) for i, g in enumerate(costs.groups)},
                     bits={n: int(rep.bits[bg[best, i]]) for i, n in enumerate(costs.layers)},
                     predicted={k: float(v[best]) for k, v in c.items()}, budget=dict(budget))
    return plan


"""Budgeted bit-width search: exact integer programming over per-layer (weight, activation) widths.

Each layer ``l`` takes exactly one candidate pair ``k = (b_w, b_a)`` (``32`` = float). With the
per-layer sensitivities ``S`` of :func:`~.sensitivity.layer_sensitivity` (assumed additive over
layers and over weights / activations, as HAWQ-V3 does):

    minimize    sum_{l,k} (S_w[l][b_w] + S_a[l][b_a]) x_{l,k}
    subject to  sum_k x_{l,k} = 1                      for every layer l
                sum_{l,k} cost_m(l, k) x_{l,k} <= B_m   for every budget m
                x_{l,k} in {0, 1}

solved exactly by ``scipy.optimize.milp`` (HiGHS branch and bound). Costs:

* ``size``: stored weight bytes, ``n_l b_w / 8`` (float: 4 bytes a weight);
* ``bitops``: ``MACs_l * b_w * b_a`` per sample;
* ``latency``: a measured :class:`~.latency.LatencyTable` (or a plain ``{layer: {(b_w, b_a): seconds}}``);
  with a table the summed cost is its predicted end-to-end latency (hardware-aware).

Example:
    >>> from lowbit.algorithms.mixed_precision import SensitivityReport
    >>> rep = SensitivityReport(layers=["a", "b"], bits=(2, 8), params={"a": 100, "b": 100}, macs={"a": 1, "b": 1},
    ...                         weight={"mse": {"a": {2: 0.5, 8: 0.0}, "b": {2: 0.1, 8: 0.0}}})
    >>> plan = search(rep, {"size": 125}, estimator="mse")   # 125 bytes: one layer at 8 bits, one at 2
    >>> plan.bits
    {'a': (8, 8), 'b': (2, 8)}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ...config import Override, Select
from ...errors import ConfigError
from ..ptq import PTQConfig
from .sensitivity import SensitivityReport

FLOAT = 32
METRICS = ("size", "bitops", "latency")


def pair_cost(rep: SensitivityReport, layer: str, pair: tuple[int, int], metric: str, latency: dict | None = None) -> float:
    """Cost of running ``layer`` at ``pair = (b_w, b_a)`` under ``metric`` (see the module docstring)."""
    wb, ab = pair
    if metric == "size":
        return rep.params[layer] * wb / 8
    if metric == "bitops":
        return float(rep.macs[layer]) * wb * ab
    if metric == "latency":
        if latency is None:
            raise ConfigError("a latency budget needs a measured latency table (latency=...; see measure_latency_table)")
        if hasattr(latency, "cost"):  # a LatencyTable
            return latency.cost(layer, pair)
        try:
            return float(latency[layer][pair])
        except KeyError:
            raise ConfigError(f"the latency table has no entry for layer {layer!r} at W{wb}A{ab}; "
                              "measure it for every candidate pair or drop that candidate") from None
    raise ConfigError(f"unknown budget metric {metric!r}; known: {list(METRICS)}")


def model_cost(rep: SensitivityReport, bits: dict[str, tuple[int, int]], metric: str, latency: dict | None = None) -> float:
    """Total cost of a per-layer assignment (e.g. a uniform one: ``{l: (4, 8) for l in rep.layers}``)."""
    return sum(pair_cost(rep, n, bits[n], metric, latency) for n in rep.layers)


def size_for_average_bits(rep: SensitivityReport, average_bits: float, fixed: dict[str, tuple[int, int]] | None = None) -> float:
    """The ``size`` budget (bytes) of ``average_bits`` bits per weight over the searched layers,
    ``sum_l n_l * average_bits / 8`` (so ``plan.average_weight_bits(rep) <= average_bits``)."""
    if not isinstance(average_bits, int | float) or not 0 < average_bits <= FLOAT:
        raise ConfigError(f"average bits per weight must be in (0, 32], got {average_bits!r}")
    return sum(rep.params[n] for n in rep.layers) * average_bits / 8


def sensitivity_of(rep: SensitivityReport, layer: str, pair: tuple[int, int], estimator: str) -> float:
    """``S_w[layer][b_w] + S_a[layer][b_a]`` (float parts count 0; an unmeasured activation table counts 0)."""
    wb, ab = pair
    s = 0.0
    if wb != FLOAT:
        s += rep._table(estimator, "weight")[layer][wb]
    if ab != FLOAT and estimator in rep.activation:
        s += rep.activation[estimator][layer][ab]
    return s


@dataclass
class Plan:
    """A per-layer width assignment: ``bits[layer] = (b_w, b_a)`` (32 = float), its costs and the
    summed sensitivity the solver minimized."""

    bits: dict[str, tuple[int, int]]
    costs: dict[str, float] = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)
    objective: float = 0.0
    estimator: str = ""

    def average_weight_bits(self, rep: SensitivityReport) -> float:
        """``sum n_l b_l / sum n_l`` over the searched layers."""
        n = sum(rep.params[layer] for layer in self.bits)
        return sum(rep.params[layer] * b[0] for layer, b in self.bits.items()) / n

    def to_config(self, base: PTQConfig) -> PTQConfig:
        """``base`` with one override per layer at the planned widths (float pairs keep that layer float).

        The searched layers were named on the BN-folded model, which is what PTQ's selectors see.
        """
        if base.weight is None:
            raise ConfigError("the base config needs a weight spec to carry a bit-width plan")
        overrides = []
        for layer, (wb, ab) in self.bits.items():
            w = None if wb == FLOAT else base.weight.replace(bits=wb)
            a = None if ab == FLOAT or base.activation is None else base.activation.replace(bits=ab)
            overrides.append(Override(select=Select(name=layer), weight=w, activation=a))
        desc = f"mixed precision ({self.estimator}, budget {self.budget})"
        return base.replace(overrides=tuple(overrides), description=desc)

    def to_dict(self) -> dict:
        return {"bits": {k: list(v) for k, v in self.bits.items()}, "costs": self.costs, "budget": self.budget,
                "objective": self.objective, "estimator": self.estimator}


def default_pairs(rep: SensitivityReport, activation_bits: Iterable[int] | int | None = 8, allow_float: bool = False) -> list[tuple[int, int]]:
    """Candidate pairs: every measured weight width x the given activation width(s); plus float."""
    abits = [activation_bits] if isinstance(activation_bits, int) else list(activation_bits or [FLOAT])
    pairs = [(wb, ab) for wb in rep.bits for ab in abits]
    if allow_float:
        pairs.append((FLOAT, FLOAT))
    return pairs


def _check_pairs(rep: SensitivityReport, pairs, estimator: str) -> list[tuple[int, int]]:
    out = []
    for p in pairs:
        try:
            wb, ab = (int(v) for v in p)
        except (TypeError, ValueError):
            raise ConfigError(f"a candidate must be a (weight_bits, activation_bits) pair, got {p!r}") from None
        if wb != FLOAT and wb not in rep.bits:
            raise ConfigError(f"candidate W{wb} was not measured; the sensitivity report has widths {list(rep.bits)} (or 32 = float)")
        if ab != FLOAT and estimator in rep.activation and ab not in rep.bits:
            raise ConfigError(f"candidate A{ab} was not measured; the sensitivity report has widths {list(rep.bits)} (or 32 = float)")
        out.append((wb, ab))
    if not out:
        raise ConfigError("no candidate (weight_bits, activation_bits) pairs given")
    return sorted(set(out))


def search(
    rep: SensitivityReport,
    budget: dict[str, float],
    *,
    estimator: str = "hessian",
    pairs: Iterable[tuple[int, int]] | None = None,
    fixed: dict[str, tuple[int, int]] | None = None,
    latency: dict | None = None,
    time_limit: float = 60.0,
) -> Plan:
    """The assignment of least summed sensitivity within every budget (exact MILP; module docstring).

    Args:
        rep: per-layer sensitivities (and weight counts / MACs).
        budget: ``{metric: maximum}`` for any of ``size`` (bytes), ``bitops``, ``latency`` (seconds).
        estimator: which sensitivity to minimize.
        pairs: candidate ``(b_w, b_a)`` pairs (default: every measured width at A8).
        fixed: layers pinned to a pair (e.g. the first and last layer at ``(8, 8)``).
        latency: a :class:`~.latency.LatencyTable` (or ``{layer: {pair: seconds}}``) for a ``latency`` budget.

    Raises:
        ConfigError: an empty / unknown budget, an unreachable budget (the message names the
            smallest achievable value), unmeasured candidates.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    if not isinstance(budget, dict) or not budget:
        raise ConfigError(f"budget must be a mapping {{metric: maximum}} with metrics from {list(METRICS)}, got {budget!r}")
    for m, v in budget.items():
        if m not in METRICS:
            raise ConfigError(f"unknown budget metric {m!r}; known: {list(METRICS)}")
        if not isinstance(v, int | float) or not np.isfinite(v) or v <= 0:
            raise ConfigError(f"budget {m} must be a positive number, got {v!r}")
    rep._table(estimator, "weight")  # the estimator was measured
    cands = _check_pairs(rep, pairs if pairs is not None else default_pairs(rep), estimator)
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - set(rep.layers))
    if unknown:
        raise ConfigError(f"fixed layer {unknown[0]!r} is not in the sensitivity report; layers: {rep.layers}")
    per_layer = {n: ([tuple(fixed[n])] if n in fixed else cands) for n in rep.layers}
    if latency is not None and hasattr(latency, "costs"):  # a measured LatencyTable
        missing = sorted(set(rep.layers) - set(latency.layers))
        if missing:
            raise ConfigError(f"the latency table has no entry for layer(s) {missing[:4]}; it was measured for another model")
        latency = latency.costs(sorted({p for ps in per_layer.values() for p in ps}))
    index = [(n, p) for n in rep.layers for p in per_layer[n]]
    c = np.array([sensitivity_of(rep, n, p, estimator) for n, p in index])
    one = np.zeros((len(rep.layers), len(index)))
    for j, (n, _) in enumerate(index):
        one[rep.layers.index(n), j] = 1
    constraints = [LinearConstraint(one, 1, 1)]
    cost_rows = {}
    for m, v in budget.items():
        row = np.array([pair_cost(rep, n, p, m, latency) for n, p in index])
        cost_rows[m] = row
        floor = sum(min(row[j] for j, (n2, _) in enumerate(index) if n2 == n) for n in rep.layers)
        if floor > v * (1 + 1e-9):
            raise ConfigError(f"budget {m} <= {v:.6g} is unreachable: the smallest achievable with these candidates is {floor:.6g}")
        constraints.append(LinearConstraint(row[None, :], -np.inf, v))
    res = milp(c, constraints=constraints, integrality=np.ones(len(index)), bounds=Bounds(0, 1),
               options={"time_limit": time_limit})
    if res.x is None:
        raise ConfigError(f"the budgets {budget} cannot all be met together with these candidates ({res.message})")
    x = np.round(res.x).astype(int)
    bits = {n: p for (n, p), on in zip(index, x, strict=True) if on}
    return Plan(bits=bits, costs={m: float(row @ x) for m, row in cost_rows.items()}, budget=dict(budget),
                objective=float(c @ x), estimator=estimator)


def pareto_frontier(rep: SensitivityReport, metric: str, budgets: Iterable[float], **kw) -> list[Plan]:
    """One plan per budget of ``metric`` (budgets below the smallest achievable are skipped), with
    plans that repeat the previous assignment dropped: the predicted accuracy-vs-cost frontier."""
    plans: list[Plan] = []
    for b in sorted(budgets):
        try:
            p = search(rep, {metric: b}, **kw)
        except ConfigError as e:
            if "unreachable" in str(e):
                continue
            raise
        if not plans or p.bits != plans[-1].bits:
            plans.append(p)
    return plans

"""Differentiable bit-width search (DNAS-style): per-layer Gumbel-softmax weights over the candidate
widths, trained against a budget penalty; the second search method next to the exact MILP.

Each searched layer ``l`` holds architecture logits ``theta_l`` over its ``K`` candidate weight
widths ``b_1 < ... < b_K`` (optionally float). One step, on a batch ``x`` with the float model's
logits ``f(x)`` as the target:

    g_l   = softmax((theta_l + G_l) / tau),  G_l ~ Gumbel(0, 1)           (a relaxed one-hot sample)
    W_l   = sum_k g_lk Q_{b_k}(W_l)                                       (the mixed weight)
    p_l   = softmax(theta_l / tau)                                        (sharpens with tau)
    E[C]  = sum_l sum_k p_lk C(l, b_k)                                    (expected cost)
    loss  = KL(softmax f(x) || softmax f_g(x)) + lambda * max(0, E[C] / B - 1)

``tau`` is annealed geometrically from ``tau[0]`` to ``tau[1]``, so ``p`` ends close to the argmax
one-hot and the penalty then constrains the cost of the plan that is read out. ``Q_b`` are the
very quantizers PTQ would use (:class:`.LayerProbe`: BN folded, lowbit's observers), and only the
``theta`` are trained: the float weights stay frozen, so the plan is evaluated with the same PTQ
as an MILP plan and the two methods compare like for like (Wu et al. 2018 train the weights too;
here that would be QAT). Activations run at the fixed width ``act_bits`` throughout.

Read-out: ``argmax_k theta_lk`` per layer; when that plan is over budget (the penalty is soft), the
*repair* lowers, one step at a time, the layer whose next cheaper width costs the least logit per
unit of cost saved, until the budget holds.

Costs are those of the MILP (:func:`.search.pair_cost`): ``size`` (bytes), ``bitops`` or measured
``latency`` (a :class:`.LatencyTable`).

Example:
    >>> import torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> torch.manual_seed(0) and None
    >>> net = FmnistMLP().eval(); x = torch.randn(256, 1, 28, 28)
    >>> n = sum(p.numel() for name, p in net.named_parameters() if name.endswith("weight"))
    >>> r = dnas_search(net, lowbit.PTQConfig(), [x], {"size": n * 3 / 8}, bits=(2, 4, 8), steps=20)
    >>> r.plan.costs["size"] <= n * 3 / 8
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...report.metrics import layer_macs
from ..ptq import PTQConfig
from .search import FLOAT, METRICS, Plan, pair_cost
from .sensitivity import LayerProbe, SensitivityReport, _batches, check_bits


class _MixedWeight(nn.Module):
    """``W = sum_k g_k Q_k(W)``: stands in for a layer's weight quantizer during the search."""

    def __init__(self, stack: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("stack", stack)
        self.g: torch.Tensor | None = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.tensordot(self.g, self.stack, dims=1)


@dataclass
class DnasResult:
    """The read-out plan, each layer's final candidate probabilities, the loss / expected-cost history
    (every 10 steps), how many repair steps the read-out needed, and the search time."""

    plan: Plan
    probabilities: dict[str, dict[int, float]]
    history: list[dict] = field(default_factory=list)
    repaired: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "probabilities": {n: {str(b): p for b, p in d.items()} for n, d in self.probabilities.items()},
                "history": self.history, "repaired": self.repaired, "seconds": self.seconds}


def _check(budget, steps, lr, tau, penalty, batch_size, act_bits) -> tuple[str, float]:
    if not isinstance(budget, dict) or len(budget) != 1:
        raise ConfigError(f"the differentiable search takes one budget {{metric: maximum}} with a metric from {list(METRICS)}, got {budget!r}")
    (metric, value), = budget.items()
    if metric not in METRICS:
        raise ConfigError(f"unknown budget metric {metric!r}; known: {list(METRICS)}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"budget {metric} must be a positive number, got {value!r}")
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    for name, v in (("lr", lr), ("penalty", penalty)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{name} must be a positive number, got {v!r}")
    try:
        t0, t1 = (float(t) for t in tau)
    except (TypeError, ValueError):
        raise ConfigError(f"tau must be a (start, end) pair of temperatures, got {tau!r}") from None
    if not (0 < t1 <= t0 and math.isfinite(t0)):
        raise ConfigError(f"tau must anneal from a start to a smaller or equal positive end, got {tau!r}")
    if act_bits != FLOAT and (isinstance(act_bits, bool) or not isinstance(act_bits, int) or not 1 <= act_bits <= 8):
        raise ConfigError(f"act_bits must be an integer width in 1..8 or 32 (float activations), got {act_bits!r}")
    return metric, float(value)


def dnas_search(
    model: nn.Module,
    base: PTQConfig,
    data: Any,
    budget: dict[str, float],
    *,
    bits: Iterable[int] = (2, 3, 4, 6, 8),
    allow_float: bool = False,
    act_bits: int = 8,
    fixed: dict[str, tuple[int, int]] | None = None,
    latency: Any = None,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 0.1,
    tau: tuple[float, float] = (5.0, 0.1),
    penalty: float = 5.0,
    max_samples: int = 2048,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> DnasResult:
    """Search per-layer weight widths by gradient descent on Gumbel-softmax logits (module docstring).

    Args:
        model: the float model (not changed).
        base: the PTQ config whose weight / activation specs are searched over widths (as in
            :func:`.layer_sensitivity`); its overrides are ignored.
        data: batches of inputs (labels, if any, are not used: the target is the float model).
        budget: one ``{metric: maximum}``, metric in ``size`` (bytes), ``bitops``, ``latency``.
        bits: candidate weight widths (1..8); ``allow_float`` adds float weights (32).
        act_bits: every searched layer's input width (32 = float).
        fixed: layers pinned to a ``(b_w, b_a)`` pair (e.g. the first and last at ``(8, 8)``).
        latency: a :class:`.LatencyTable` for a ``latency`` budget.
        steps, batch_size, lr, tau, penalty: the optimisation (Adam on the logits).
        max_samples: how many samples of ``data`` the search draws its batches from.

    Returns:
        a :class:`DnasResult`; ``result.plan`` is a :class:`.Plan` (``plan.to_config(base)``).

    Raises:
        ConfigError: a bad budget or hyper-parameter, an unreachable budget (names the smallest
            achievable), unknown fixed layers.
        CalibrationError: empty / NaN data.
    """
    metric, limit = _check(budget, steps, lr, tau, penalty, batch_size, act_bits)
    cand = list(check_bits(bits, "bits")) + ([FLOAT] if allow_float else [])
    fixed = {k: (int(v[0]), int(v[1])) for k, v in (fixed or {}).items()}
    t_start = time.perf_counter()
    xs, seen = [], 0
    for x, _ in _batches(data):
        xs.append(x[: max_samples - seen])
        seen += xs[-1].shape[0]
        if seen >= max_samples:
            break
    pool = torch.cat(xs)
    model = model.eval()
    probe_bits = tuple(sorted({b for b in cand if b != FLOAT} | {w for w, _ in fixed.values() if w != FLOAT}))
    probe = LayerProbe(model, base, [pool[i:i + 256] for i in range(0, min(len(pool), 512), 256)], probe_bits)
    unknown = sorted(set(fixed) - set(probe.layers))
    if unknown:
        raise ConfigError(f"fixed layer {unknown[0]!r} is not a searched layer; layers: {probe.layers}")
    if act_bits != FLOAT and probe.act_spec is not None and act_bits not in probe.act_q[probe.layers[0]]:
        probe.act_q = LayerProbe(model, base, [pool[:256]], (act_bits,)).act_q
    macs = layer_macs(probe.model, pool[:1])
    rep = SensitivityReport(layers=list(probe.layers), bits=probe_bits, params={n: probe.mods[n].weight.numel() for n in probe.layers},
                            macs={n: macs.get(n, 0) for n in probe.layers})
    if latency is not None and hasattr(latency, "costs"):
        missing = sorted(set(rep.layers) - set(latency.layers))
        if missing:
            raise ConfigError(f"the latency table has no entry for layer(s) {missing[:4]}; it was measured for another model")
    searched = [n for n in probe.layers if n not in fixed]
    if not searched:
        raise ConfigError(f"nothing to search: all {len(probe.layers)} layers are pinned by fixed={sorted(fixed)}; "
                          "unpin some (the CLI pins the first and last layer unless --no-keep-ends)")
    pair = {b: (b, act_bits) for b in cand}
    cost = torch.tensor([[pair_cost(rep, n, pair[b], metric, latency) for b in cand] for n in searched], dtype=torch.float64)
    const = sum(pair_cost(rep, n, fixed[n], metric, latency) for n in fixed)
    floor = const + float(cost.min(1).values.sum())
    if floor > limit * (1 + 1e-9):
        raise ConfigError(f"budget {metric} <= {limit:.6g} is unreachable: the smallest achievable with these candidates is {floor:.6g}")
    with torch.no_grad():
        target = torch.cat([F.log_softmax(probe.model(pool[i:i + 256]), 1) for i in range(0, len(pool), 256)])
    # switch in: mixed weights + fixed-width inputs on searched layers, fixed widths on pinned ones
    mixed = {}
    for n in probe.layers:
        m = probe.mods[n]
        wb, ab = fixed.get(n, (None, act_bits))
        if n in fixed:
            m.weight_quant = None if wb == FLOAT else probe.weight_q[n][wb]
        else:
            with torch.no_grad():
                stack = torch.stack([m.weight if b == FLOAT else probe.weight_q[n][b](m.weight) for b in cand])
            mixed[n] = m.weight_quant = _MixedWeight(stack)
        m.input_quant = None if ab == FLOAT or probe.act_spec is None else probe.act_q[n][ab]
    gen = torch.Generator().manual_seed(seed)
    theta = torch.zeros(len(searched), len(cand), requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    say = log or (lambda s: None)
    history: list[dict] = []
    t0, t1 = float(tau[0]), float(tau[1])
    kl0 = None
    for step in range(steps):
        t = t0 * (t1 / t0) ** (step / max(steps - 1, 1))
        idx = torch.randint(0, len(pool), (min(batch_size, len(pool)),), generator=gen)
        u = torch.rand(theta.shape, generator=gen).clamp_(1e-10, 1 - 1e-10)
        g = F.softmax((theta - torch.log(-torch.log(u))) / t, dim=1)
        for i, n in enumerate(searched):
            mixed[n].g = g[i]
        kl = F.kl_div(F.log_softmax(probe.model(pool[idx]), 1), target[idx], log_target=True, reduction="batchmean")
        expected = const + (F.softmax(theta / t, dim=1).double() * cost).sum()
        if kl0 is None:
            kl0 = max(float(kl.detach()), 1e-8)
        loss = kl / kl0 + penalty * ((expected / limit - 1) ** 2).float()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            history.append({"step": step, "tau": t, "kl": float(kl.detach()), "expected_cost": float(expected.detach())})
            if step % 50 == 0 or step == steps - 1:
                say(f"  dnas step {step:>4}: tau {t:.3f}  KL {history[-1]['kl']:.4f}  E[{metric}] / budget "
                    f"{history[-1]['expected_cost'] / limit:.3f}")
    for n in probe.layers:  # leave the probe as it was
        probe.mods[n].weight_quant = probe.mods[n].input_quant = None
    th = theta.detach().double()
    choice = th.argmax(1).tolist()
    repaired = 0
    while const + sum(float(cost[i, k]) for i, k in enumerate(choice)) > limit * (1 + 1e-9):
        best = None  # (logit lost per cost saved, layer, new candidate)
        for i, k in enumerate(choice):
            cheaper = [j for j in range(len(cand)) if cost[i, j] < cost[i, k]]
            if not cheaper:
                continue
            j = max(cheaper, key=lambda j: (float(cost[i, j]), float(th[i, j])))  # the next cheaper width
            rate = float(th[i, k] - th[i, j]) / float(cost[i, k] - cost[i, j])
            if best is None or rate < best[0]:
                best = (rate, i, j)
        _, i, j = best  # not None: the floor is within the budget
        choice[i] = j
        repaired += 1
    plan_bits = {n: fixed[n] if n in fixed else pair[cand[choice[searched.index(n)]]] for n in probe.layers}
    costs = {metric: sum(pair_cost(rep, n, plan_bits[n], metric, latency) for n in probe.layers)}
    if metric != "size":
        costs["size"] = sum(pair_cost(rep, n, plan_bits[n], "size") for n in probe.layers)
    probs = F.softmax(th / t1, dim=1)  # as sharp as the penalty saw them at the end
    plan = Plan(bits=plan_bits, costs=costs, budget={metric: limit}, objective=history[-1]["kl"], estimator="dnas")
    return DnasResult(plan=plan, probabilities={n: {b: float(probs[i, k]) for k, b in enumerate(cand)} for i, n in enumerate(searched)},
                      history=history, repaired=repaired, seconds=time.perf_counter() - t_start)

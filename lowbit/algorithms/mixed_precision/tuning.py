"""Accuracy-aware tuning (F28): raise the precision of the most sensitive layers until the accuracy
drop on a held-out split is within a bound, then give back every raise that is not needed.

Given a float model ``f``, a PTQ config ``c`` and a bound ``d`` (percentage points), with
``acc(.)`` the top-1 accuracy on the held-out split and ``Q(c, R)`` the model quantized by ``c``
with the layers in ``R`` raised to ``raise_to`` (W8A8 or float)::

    drop(R) = acc(f) - acc(Q(c, R))
    find a small R with drop(R) <= d

1. **Rank** the layers the config quantizes below ``raise_to``: by a sensitivity estimator
   (``mse`` / ``loss`` / ``hessian`` of :func:`.layer_sensitivity`, weight + input activation at the
   config's widths, most sensitive first), or ``greedy``: every step measures the held-out accuracy
   of raising each remaining layer and keeps the best (``O(n^2)`` evaluations instead of ``O(n)``).
2. **Raise** layers in that order until ``drop(R) <= d``.
3. **Prune**: try lowering each raised layer back (least sensitive first); keep it lowered when the
   bound still holds; repeat until a pass changes nothing. So lowering any single layer of the
   result has been measured to break the bound.

Besides the layers, the functional residual adds and average pools that PTQ quantizes (they share
``add_activation``) are one more candidate, ``"adds+pools"``: raised to 8 bits, or kept float with
``raise_to="float"``. A 4-bit residual sum cannot be fixed by raising the layers around it.

When even every candidate raised misses the bound, the result says so (``met=False``) and carries
the closest configuration (the best held-out accuracy seen).

Every evaluation quantizes a fresh copy with the real config (the same PTQ calibration the final
model gets), so the reported held-out drop is the drop of the returned config, not an estimate.

Example:
    >>> import torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> torch.manual_seed(0) and None
    >>> net = FmnistMLP().eval(); x = torch.randn(256, 1, 28, 28); y = net(x).argmax(1)
    >>> r = accuracy_aware_tune(net, lowbit.load_recipe("w2a8"), [x[:128]], [(x, y)], max_drop=100.0, method="mse")
    >>> r.met, r.raised
    (True, [])
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ...config import Override, Select
from ...errors import ConfigError, UnsupportedError
from ..ptq import PTQConfig

METHODS = ("hessian", "loss", "mse", "greedy")
RAISE_TO = ("w8a8", "float")


@dataclass
class TuneResult:
    """What :func:`accuracy_aware_tune` found.

    ``config`` is the input config plus one override per raised layer; ``raised`` lists those
    layers in the order they were raised; ``steps`` records every evaluation
    (``{"action", "layer", "raised", "accuracy", "drop"}``); accuracies are on the held-out split.
    """

    config: PTQConfig
    raised: list[str]
    met: bool
    max_drop: float
    method: str
    raise_to: str
    float_accuracy: float
    base_accuracy: float
    accuracy: float
    candidates: list[str]
    steps: list[dict] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0

    @property
    def drop(self) -> float:
        return self.float_accuracy - self.accuracy

    def summary(self) -> str:
        """One paragraph: met or not, the drop before and after, the layers raised."""
        head = "met" if self.met else "NOT met (closest configuration shown)"
        return (f"accuracy-aware tuning ({self.method}, raise to {self.raise_to}): bound {self.max_drop:.2f} pp {head}; "
                f"held-out drop {self.float_accuracy - self.base_accuracy:+.2f} -> {self.drop:+.2f} pp with "
                f"{len(self.raised)} of {len(self.candidates)} layers raised {self.raised}; {self.evaluations} evaluations, "
                f"{self.seconds:.0f} s")

    def to_dict(self) -> dict:
        return {"method": self.method, "raise_to": self.raise_to, "max_drop": self.max_drop, "met": self.met,
                "raised": self.raised, "candidates": self.candidates, "float_accuracy": self.float_accuracy,
                "base_accuracy": self.base_accuracy, "accuracy": self.accuracy, "drop": self.drop,
                "evaluations": self.evaluations, "seconds": round(self.seconds, 2), "steps": self.steps}


def held_out_split(data, n: int, seed: int = 0):
    """Split a labelled :class:`lowbit.data.TensorDataset` in two by a seeded permutation: ``n``
    samples to tune on and the rest to report an unseen drop on.

    Example:
        >>> import torch
        >>> from lowbit.data import TensorDataset
        >>> a, b = held_out_split(TensorDataset(torch.zeros(10, 1, 28, 28), torch.arange(10)), 4)
        >>> len(a), len(b), sorted(a.labels.tolist() + b.labels.tolist()) == list(range(10))
        (4, 6, True)
    """
    import torch

    from ...data import TensorDataset

    if not isinstance(data, TensorDataset):
        raise ConfigError(f"held_out_split takes a lowbit TensorDataset, got {type(data).__name__}")
    if not 0 < n < len(data):
        raise ConfigError(f"the tuning split must hold 1..{len(data) - 1} of the {len(data)} samples, got {n}")
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    a, b = idx[:n], idx[n:]
    return TensorDataset(data.images[a], data.labels[a]), TensorDataset(data.images[b], data.labels[b])


ADDS = "adds+pools"  # the functional residual adds and average pools: one unit (they share ``add_activation``)


def _raised_config(config: PTQConfig, layers: list[str], raise_to: str) -> PTQConfig:
    if not layers:
        return config
    ovs = []
    if ADDS in layers:
        if raise_to == "float":
            config = config.replace(quantize_adds=False)
        else:
            spec = config.add_activation if config.add_activation is not None else config.activation
            config = config.replace(add_activation=spec.replace(bits=8))
    for n in (n for n in layers if n != ADDS):
        if raise_to == "float":
            ovs.append(Override(select=Select(name=n), weight=None, activation=None))
        else:
            w = config.weight.replace(bits=8) if config.weight is not None else None
            a = config.activation.replace(bits=8) if config.activation is not None else None
            ovs.append(Override(select=Select(name=n), weight=w, activation=a))
    return config.replace(overrides=tuple(config.overrides) + tuple(ovs),
                          description=f"{config.description} + accuracy-aware: {len(layers)} layers at {raise_to}".strip())


def _candidates(model: nn.Module, config: PTQConfig, raise_to: str) -> list[str]:
    """Layers ``config`` quantizes below ``raise_to`` (named on the BN-folded model, as selectors see it)."""
    from ...api import quantize_

    plain = PTQConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(PTQConfig)})
    probe = quantize_(copy.deepcopy(model), plain, calibrate=False)
    out = [name for name, spec in probe.lowbit_info["layers"].items()
           if raise_to == "float" or min(spec["weight_bits"], spec["activation_bits"]) < 8]
    info = probe.lowbit_info
    if info.get("adds") or info.get("pools"):
        spec = config.add_activation if config.add_activation is not None else config.activation
        if raise_to == "float" or spec.bits < 8:
            out.insert(0, ADDS)
    return out


def _ranking(model, config, calib, method: str, candidates: list[str], samples: int) -> list[str]:
    from .sensitivity import layer_sensitivity

    wb = config.weight.bits if config.weight is not None else 8
    ab = config.activation.bits if config.activation is not None else None
    bits = sorted({wb} | ({ab} if ab is not None else set()))
    rep = layer_sensitivity(model, config, calib, bits=bits, estimators=(method,), max_samples=samples)
    act = rep.activation.get(method, {})

    def score(n: str) -> float:
        s = rep.weight[method][n][wb]
        if ab is not None and n in act:
            s += act[n][ab]
        return s

    layers = [n for n in candidates if n != ADDS]
    missing = [n for n in layers if n not in rep.weight[method]]
    if missing:
        raise UnsupportedError(f"no sensitivity for layers {missing}: the config's overrides name layers its base selection skips")
    # the adds / pools unit has no per-layer score: a low-bit residual sum feeds every later layer, so it
    # is raised first (and lowered back by the prune when it is not needed)
    return [n for n in candidates if n == ADDS] + sorted(layers, key=lambda n: -score(n))


def check_tuning_args(config, max_drop, method: str, raise_to: str) -> None:
    """Validate the arguments of :func:`accuracy_aware_tune` (the CLI calls it before loading anything).

    Example:
        >>> import lowbit
        >>> check_tuning_args(lowbit.load_recipe("w4a4"), 0.1, "hessian", "w8a8")

    Raises:
        ConfigError: a QAT config, a bound that is not a finite number >= 0, an unknown method or target.
    """
    if not isinstance(config, PTQConfig) or config.kind == "qat":
        raise ConfigError(f"accuracy-aware tuning takes a post-training config (a PTQ recipe), got "
                          f"{getattr(config, 'kind', type(config).__name__)!r}: QAT recipes train, tune them with lowbit qat")
    if isinstance(max_drop, bool) or not isinstance(max_drop, int | float) or not math.isfinite(max_drop) or max_drop < 0:
        raise ConfigError(f"max_drop must be a finite number of percentage points >= 0, got {max_drop!r}")
    if method not in METHODS:
        raise ConfigError(f"unknown tuning method {method!r}; known: {list(METHODS)}")
    if raise_to not in RAISE_TO:
        raise ConfigError(f"raise_to must be one of {list(RAISE_TO)}, got {raise_to!r}")


def accuracy_aware_tune(
    model: nn.Module,
    config: PTQConfig,
    calib: Any,
    held_out: Any,
    *,
    max_drop: float,
    method: str = "hessian",
    raise_to: str = "w8a8",
    prune: bool = True,
    sensitivity_samples: int = 512,
    float_accuracy: float | None = None,
    log: Callable[[str], None] | None = None,
) -> TuneResult:
    """Raise the precision of the most sensitive layers until the held-out drop is ``<= max_drop``.

    Args:
        model: the float model (not changed).
        config: a PTQ config (a PTQ recipe); its own overrides stay, raises are appended.
        calib: calibration data (as for :func:`lowbit.quantize_`); labelled batches also feed the
            sensitivity estimators (unlabelled ones use the float model's top-1).
        held_out: labelled ``(inputs, labels)`` batches the drop is measured on — keep it apart
            from the data you report final numbers on.
        max_drop: the bound in percentage points of top-1 accuracy (``>= 0``).
        method: ``hessian``, ``loss``, ``mse`` (rank once by that estimator) or ``greedy``
            (measure every remaining raise at every step).
        raise_to: ``w8a8`` (8-bit weights and input activations) or ``float`` (keep the layer float).
        prune: after meeting the bound, lower back every raise that is not needed.
        float_accuracy: the float model's held-out accuracy when already known.
        log: called with one line per evaluation (e.g. ``print``).

    Raises:
        ConfigError: a bad bound, method or target, or a config that is not PTQ.
    """
    from ...api import evaluate, quantize_

    check_tuning_args(config, max_drop, method, raise_to)
    t0 = time.perf_counter()
    model = model.eval()
    say = log or (lambda s: None)
    f_acc = evaluate(model, held_out) if float_accuracy is None else float(float_accuracy)
    cache: dict[frozenset, float] = {}
    steps: list[dict] = []

    def acc_of(raised: list[str], action: str, layer: str | None) -> float:
        key = frozenset(raised)
        if key not in cache:
            q = quantize_(copy.deepcopy(model), _raised_config(config, raised, raise_to), data=calib)
            cache[key] = evaluate(q, held_out)
            steps.append({"action": action, "layer": layer, "raised": list(raised), "accuracy": cache[key],
                          "drop": f_acc - cache[key]})
            say(f"  {action:>6} {layer or '-':<22} {len(raised):>2} raised: held-out {cache[key]:.2f} % (drop {f_acc - cache[key]:+.2f} pp)")
        return cache[key]

    def ok(a: float) -> bool:
        return f_acc - a <= max_drop + 1e-9

    base_acc = acc_of([], "base", None)
    cands = _candidates(model, config, raise_to)
    raised: list[str] = []
    best = ([], base_acc)
    if not ok(base_acc):
        if method == "greedy":
            order: list[str] = []
            cur = base_acc
            while not ok(cur) and len(raised) < len(cands):
                trial = {n: acc_of(raised + [n], "try", n) for n in cands if n not in raised}
                pick = max(trial, key=lambda n: trial[n])
                raised.append(pick)
                order.append(pick)
                cur = trial[pick]
                if cur > best[1]:
                    best = (list(raised), cur)
        else:
            order = _ranking(model, config, calib, method, cands, sensitivity_samples)
            say(f"  ranking ({method}): {order}")
            for n in order:
                raised.append(n)
                a = acc_of(raised, "raise", n)
                if a > best[1]:
                    best = (list(raised), a)
                if ok(a):
                    break
        if ok(acc_of(raised, "raise", raised[-1] if raised else None)) and prune:
            # least sensitive (last raised) first; repeat until a whole pass lowers nothing, so that
            # lowering any one layer of the result has been measured to break the bound
            changed = True
            while changed:
                changed = False
                for n in reversed(list(raised)):
                    trial = [m for m in raised if m != n]
                    if ok(acc_of(trial, "lower", n)):
                        raised, changed = trial, True
        if not ok(acc_of(raised, "final", None)):
            raised = best[0]
    final_acc = acc_of(raised, "final", None)
    return TuneResult(config=_raised_config(config, raised, raise_to), raised=raised, met=ok(final_acc), max_drop=float(max_drop),
                      method=method, raise_to=raise_to, float_accuracy=f_acc, base_accuracy=base_acc, accuracy=final_acc,
                      candidates=cands, steps=steps, evaluations=len(cache), seconds=time.perf_counter() - t0)

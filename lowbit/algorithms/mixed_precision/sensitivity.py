"""Per-layer sensitivity to quantization: output error, loss change and Hessian trace (HAWQ).

Every estimator answers one question per layer ``l`` and candidate width ``b``: how much does the
network suffer when *only* layer ``l``'s weights (or only its input activations) are quantized to
``b`` bits, everything else float? The mixed-precision search (:mod:`.search`) adds these numbers
over layers, so they must be comparable across layers.

Estimators (``S[l][b]``, larger = more sensitive):

* ``mse``: output noise relative to the float output, ``||f_q(x) - f(x)||^2 / ||f(x)||^2``
  (``= 10^(-SQNR/10)``; the report also shows the SQNR in dB).
* ``loss``: cross-entropy increase ``L(f_q) - L(f)`` on labelled batches (batches without labels use
  the float model's top-1 as the label).
* ``hessian``: HAWQ-V2/V3, ``Omega = Tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2``, the second-order
  Taylor term of the loss for a perturbation spread evenly over the layer's ``n_l`` weights.
  ``Tr(H_l)`` is estimated by Hutchinson's method, ``Tr(H) = E_v[v^T H v]`` with Rademacher ``v``;
  one double backward gives ``v^T H v`` for every layer at once (the cross terms average out).
  Activations use the Hessian of the loss w.r.t. the layer input and the measured
  ``||Q_b(x) - x||^2`` on the same batch.

The probe works on the BN-folded model with lowbit's own quantizers and observers, so a layer at
``b`` bits here is exactly the layer PTQ would produce with the same spec.

Example:
    >>> import torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> torch.manual_seed(0) and None
    >>> x = torch.randn(64, 1, 28, 28); y = torch.randint(0, 10, (64,))
    >>> rep = layer_sensitivity(FmnistMLP().eval(), lowbit.PTQConfig(), [(x, y)], bits=(2, 8), estimators=("mse",))
    >>> rep.layers
    ['fc1', 'fc2']
    >>> rep.weight["mse"]["fc1"][2] > rep.weight["mse"]["fc1"][8]
    True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CalibrationError, ConfigError, UnsupportedError
from ...nn import ActQuant, WeightQuant
from ...nn.layers import is_quant_module
from ...report.metrics import layer_macs
from ..ptq import PTQConfig

ESTIMATORS = ("mse", "loss", "hessian")
BITS = tuple(range(1, 9))


def _batches(data: Any) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    from ...api import iter_batches

    out = []
    for b in iter_batches(data):
        if isinstance(b, torch.Tensor):
            out.append((b, None))
        elif isinstance(b, list | tuple) and len(b) >= 2 and isinstance(b[0], torch.Tensor) and isinstance(b[1], torch.Tensor):
            out.append((b[0], b[1]))
        elif isinstance(b, list | tuple) and len(b) == 1 and isinstance(b[0], torch.Tensor):
            out.append((b[0], None))
        else:
            raise CalibrationError(f"sensitivity data: a batch must be a tensor or an (inputs, labels) pair, got {type(b).__name__}")
    if not out or all(x.shape[0] == 0 for x, _ in out):
        raise CalibrationError("sensitivity data is empty; pass at least one non-empty batch, e.g. a lowbit dataset .subset(512)")
    for i, (x, _) in enumerate(out):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise CalibrationError(f"sensitivity batch {i} holds NaN/Inf values; clean the data first")
    return out


def check_bits(bits: Iterable[int], where: str = "bits") -> tuple[int, ...]:
    """Validated, sorted, de-duplicated candidate widths (integers in 1..8)."""
    try:
        out = tuple(sorted(set(bits)))
    except TypeError:
        raise ConfigError(f"{where} must be a list of integer widths, got {bits!r}") from None
    bad = [b for b in out if not isinstance(b, int) or isinstance(b, bool) or b not in BITS]
    if not out or bad:
        raise ConfigError(f"{where} must be integer widths in 1..8 (float is always a candidate), got {list(out) or 'none'}")
    return out


class LayerProbe:
    """The BN-folded float model with every quantizable layer swapped, quantizers off, and for each
    candidate width one calibrated weight / activation quantizer per layer to switch in.

    Activation grids are calibrated with everything upstream float (the question is "this layer
    alone"). ``with probe.quantized(layer, weight_bits=2): probe.model(x)`` runs it.
    """

    def __init__(self, model: nn.Module, base: PTQConfig, inputs: list[torch.Tensor], bits: tuple[int, ...]) -> None:
        from ...api import quantize_

        if not isinstance(base, PTQConfig):
            raise ConfigError(f"base must be a PTQConfig (or a subclass: a PTQ recipe), got {type(base).__name__}")
        if base.weight is None:
            raise ConfigError("mixed precision searches weight widths: the base config needs a weight spec (weight: None given)")
        self.bits = check_bits(bits)
        plain = dict(layers=base.layers, exclude=base.exclude, overrides=(), fold_bn=base.fold_bn, quantize_adds=False,
                     group_policy=base.group_policy)
        self.weight_spec, self.act_spec = base.weight, base.activation
        self.model = quantize_(copy.deepcopy(model), PTQConfig(weight=base.weight, activation=None, **plain), calibrate=False)
        self.layers = [n for n, m in self.model.named_modules() if is_quant_module(m)]
        if not self.layers:
            raise UnsupportedError(f"{type(model).__name__} has no quantizable layer selected by the base config")
        self.mods = {n: self.model.get_submodule(n) for n in self.layers}
        self.weight_q: dict[str, dict[int, WeightQuant]] = {n: {} for n in self.layers}
        self.act_q: dict[str, dict[int, ActQuant]] = {n: {} for n in self.layers}
        for n, m in self.mods.items():
            spec = m.weight_quant.spec
            for b in self.bits:
                q = WeightQuant(spec.replace(bits=b))
                q.qparams(m.weight)
                self.weight_q[n][b] = q
            m.weight_quant = None
        if self.act_spec is not None:
            for b in self.bits:
                cal = quantize_(copy.deepcopy(model), PTQConfig(weight=None, activation=self.act_spec.replace(bits=b), **plain),
                                data=inputs)
                for n in self.layers:
                    self.act_q[n][b] = cal.get_submodule(n).input_quant
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @contextmanager
    def quantized(self, layer: str, *, weight_bits: int | None = None, act_bits: int | None = None) -> Iterator[nn.Module]:
        """Switch on layer ``layer``'s weight and / or input quantizer at the given widths."""
        m = self.mods[layer]
        try:
            if weight_bits is not None:
                m.weight_quant = self.weight_q[layer][weight_bits]
            if act_bits is not None:
                m.input_quant = self.act_q[layer][act_bits]
            yield self.model
        finally:
            m.weight_quant = None
            m.input_quant = None

    def weight_error(self, layer: str, bits: int) -> float:
        """``||Q_b(W) - W||^2`` of one layer."""
        m = self.mods[layer]
        with torch.no_grad():
            return float(((self.weight_q[layer][bits](m.weight) - m.weight) ** 2).sum())


@dataclass
class SensitivityReport:
    """Sensitivities ``weight[estimator][layer][bits]`` and ``activation[...]`` (larger = worse),
    plus each layer's weight count and MACs per sample (the search's cost model)."""

    layers: list[str]
    bits: tuple[int, ...]
    weight: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    activation: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    macs: dict[str, int] = field(default_factory=dict)
    hessian_trace: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: int = 0

    def ranked(self, estimator: str = "hessian", bits: int | None = None, kind: str = "weight") -> list[tuple[str, float]]:
        """Layers from most to least sensitive at ``bits`` (default: the lowest candidate)."""
        table = self._table(estimator, kind)
        b = min(self.bits) if bits is None else bits
        if b not in self.bits:
            raise ConfigError(f"bits {b} was not measured; measured widths: {list(self.bits)}")
        return sorted(((n, table[n][b]) for n in self.layers), key=lambda t: -t[1])

    def _table(self, estimator: str, kind: str) -> dict[str, dict[int, float]]:
        src = {"weight": self.weight, "activation": self.activation}.get(kind)
        if src is None:
            raise ConfigError(f"kind must be 'weight' or 'activation', got {kind!r}")
        if estimator not in src:
            raise ConfigError(f"estimator {estimator!r} was not measured for {kind}s; measured: {sorted(src)}")
        return src[estimator]

    def markdown(self, bits: int | None = None) -> str:
        """A ranked Markdown table (by the first measured estimator) at ``bits`` (default: lowest)."""
        b = min(self.bits) if bits is None else bits
        ests = list(self.weight)
        head = "| rank | layer | params | " + " | ".join(f"W{b} {e}" for e in ests) + " |"
        if "mse" in self.weight:
            head = head[:-1] + f"| W{b} SQNR dB |"
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for i, (n, _) in enumerate(self.ranked(ests[0], b), 1):
            row = f"| {i} | {n} | {self.params[n]} | " + " | ".join(f"{self.weight[e][n][b]:.3g}" for e in ests) + " |"
            if "mse" in self.weight:
                v = self.weight["mse"][n][b]
                row = row[:-1] + f"| {(-10 * math.log10(v)) if v > 0 else math.inf:.1f} |"
            lines.append(row)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def enc(t):
            return {e: {n: {str(b): v for b, v in d.items()} for n, d in per.items()} for e, per in t.items()}

        return {"layers": self.layers, "bits": list(self.bits), "weight": enc(self.weight), "activation": enc(self.activation),
                "params": self.params, "macs": self.macs, "hessian_trace": self.hessian_trace, "samples": self.samples}

    @classmethod
    def from_dict(cls, d: dict) -> SensitivityReport:
        def dec(t):
            return {e: {n: {int(b): float(v) for b, v in per_n.items()} for n, per_n in per.items()} for e, per in t.items()}

        try:
            return cls(layers=list(d["layers"]), bits=tuple(int(b) for b in d["bits"]), weight=dec(d["weight"]),
                       activation=dec(d.get("activation", {})), params={k: int(v) for k, v in d["params"].items()},
                       macs={k: int(v) for k, v in d["macs"].items()}, hessian_trace=d.get("hessian_trace", {}),
                       samples=int(d.get("samples", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not a sensitivity report ({type(e).__name__}: {e})") from None


def _ce(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(logits, y, reduction="sum"))


@torch.no_grad()
def _error_estimators(probe: LayerProbe, batches, refs, ests, rep: SensitivityReport) -> None:
    n_total = sum(x.shape[0] for x, _ in batches)
    ref_energy = sum(float((r**2).sum()) for r in refs)
    base_loss = sum(_ce(r, y) for r, (_, y) in zip(refs, batches, strict=True)) / n_total
    for kind, table in (("weight", rep.weight), ("activation", rep.activation)):
        if kind == "activation" and probe.act_spec is None:
            continue
        for e in ests:
            table.setdefault(e, {n: {} for n in probe.layers})
        for n in probe.layers:
            for b in probe.bits:
                kw = {"weight_bits": b} if kind == "weight" else {"act_bits": b}
                noise = loss = 0.0
                with probe.quantized(n, **kw) as m:
                    for (x, y), r in zip(batches, refs, strict=True):
                        out = m(x)
                        noise += float(((out - r) ** 2).sum())
                        loss += _ce(out, y)
                if "mse" in ests:
                    table["mse"][n][b] = noise / max(ref_energy, 1e-30)
                if "loss" in ests:
                    table["loss"][n][b] = loss / n_total - base_loss


def _hutchinson(probe: LayerProbe, batches, n_vectors: int, seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """Hutchinson traces of the loss Hessian, per layer: ``Tr(H_W) / n_W`` (per weight) and ``Tr(H_x)``
    w.r.t. the layer's input over all samples (``L`` is the mean loss over every batch, so the
    per-batch traces add up)."""
    g = torch.Generator().manual_seed(seed)
    mods, names = probe.mods, probe.layers
    w_tr = {n: 0.0 for n in names}
    x_tr = {n: 0.0 for n in names}
    n_total = sum(b[0].shape[0] for b in batches)
    for m in mods.values():
        m.weight.requires_grad_(True)
    try:
        for x, y in batches:
            acts: dict[str, torch.Tensor] = {}
            # the inputs stay in the graph (no detach): upstream weights' second derivatives flow through them
            hooks = [m.register_forward_pre_hook(lambda mod, args, name=n, acts=acts: acts.__setitem__(name, args[0]))
                     for n, m in mods.items()]
            try:
                loss = F.cross_entropy(probe.model(x.clone().requires_grad_(True)), y, reduction="sum") / n_total
            finally:
                for h in hooks:
                    h.remove()
            tensors = [mods[n].weight for n in names] + [acts[n] for n in names]
            grads = torch.autograd.grad(loss, tensors, create_graph=True)
            for k in range(n_vectors):
                vs = [torch.randint(0, 2, t.shape, generator=g).to(t.dtype) * 2 - 1 for t in tensors]
                hv = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=k < n_vectors - 1)
                for i, n in enumerate(names):
                    w_tr[n] += float((vs[i] * hv[i]).sum()) / n_vectors
                    x_tr[n] += float((vs[i + len(names)] * hv[i + len(names)]).sum()) / n_vectors
    finally:
        for m in mods.values():
            m.weight.requires_grad_(False)
    return {n: w_tr[n] / mods[n].weight.numel() for n in names}, x_tr


def layer_sensitivity(
    model: nn.Module,
    base: PTQConfig,
    data: Any,
    *,
    bits: Iterable[int] = (2, 3, 4, 6, 8),
    estimators: Iterable[str] = ESTIMATORS,
    max_samples: int = 512,
    hutchinson_vectors: int = 16,
    seed: int = 0,
) -> SensitivityReport:
    """Measure every selected layer's sensitivity to each candidate width (see the module docstring).

    Args:
        model: the float model (not changed).
        base: the PTQ config whose weight / activation specs (mapping, granularity, observer) are
            searched over widths; its ``layers`` / ``exclude`` pick the layers; its overrides are ignored.
        data: batches of inputs or ``(inputs, labels)``; at most ``max_samples`` samples are used for
            calibration and for every estimator.
        bits: candidate widths (1..8).
        estimators: any of ``mse``, ``loss``, ``hessian``.
        hutchinson_vectors: Rademacher vectors per batch for the Hessian traces.

    Raises:
        ConfigError: unknown estimator, bad widths, a base config without weights.
        CalibrationError: empty / NaN data.
    """
    ests = tuple(estimators)
    bad = [e for e in ests if e not in ESTIMATORS]
    if not ests or bad:
        raise ConfigError(f"unknown sensitivity estimator {bad[0] if bad else 'none'!r}; known: {list(ESTIMATORS)}")
    if not isinstance(hutchinson_vectors, int) or hutchinson_vectors < 1:
        raise ConfigError(f"hutchinson_vectors must be a positive integer, got {hutchinson_vectors!r}")
    if not isinstance(max_samples, int) or max_samples < 1:
        raise ConfigError(f"max_samples must be a positive integer, got {max_samples!r}")
    batches, seen = [], 0
    for x, y in _batches(data):
        x, y = x[: max_samples - seen], (y[: max_samples - seen] if y is not None else None)
        if x.shape[0]:
            batches.append((x, y))
            seen += x.shape[0]
        if seen >= max_samples:
            break
    model = model.eval()
    probe = LayerProbe(model, base, [x for x, _ in batches], tuple(bits))
    with torch.no_grad():
        refs = [probe.model(x) for x, _ in batches]
    batches = [(x, y if y is not None else r.argmax(1)) for (x, y), r in zip(batches, refs, strict=True)]
    macs = layer_macs(probe.model, batches[0][0])
    rep = SensitivityReport(layers=list(probe.layers), bits=probe.bits, samples=seen,
                            params={n: probe.mods[n].weight.numel() for n in probe.layers},
                            macs={n: macs.get(n, 0) for n in probe.layers})
    err = [e for e in ests if e in ("mse", "loss")]
    if err:
        _error_estimators(probe, batches, refs, err, rep)
    if "hessian" in ests:
        w_tr, x_tr = _hutchinson(probe, batches, hutchinson_vectors, seed)
        rep.hessian_trace = {"weight_per_element": w_tr, "input_total": x_tr}
        rep.weight["hessian"] = {n: {b: w_tr[n] * probe.weight_error(n, b) for b in probe.bits} for n in probe.layers}
        if probe.act_spec is not None:
            rep.activation["hessian"] = {}
            with torch.no_grad():
                for n in probe.layers:
                    xs: list[torch.Tensor] = []
                    h = probe.mods[n].register_forward_pre_hook(lambda mod, args, xs=xs: xs.append(args[0]))
                    try:
                        for x, _ in batches:
                            probe.model(x)
                    finally:
                        h.remove()
                    numel = sum(t.numel() for t in xs)
                    rep.activation["hessian"][n] = {}
                    for b in probe.bits:
                        q = probe.act_q[n][b]
                        e2 = sum(float(((q(t) - t) ** 2).sum()) for t in xs)
                        # Tr(H_x) / n_x * ||Q(x) - x||^2, both over the whole batch
                        rep.activation["hessian"][n][b] = x_tr[n] / max(numel, 1) * e2
    return rep

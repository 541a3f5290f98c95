"""QAT handler (prepare / convert) and the prepare step's refiner (the quantizer swap).

prepare = :func:`~lowbit.algorithms.ptq.quantize_ptq` (BN folded, layers swapped) -> calibration
(``quantize_``) -> :func:`attach_learned` (every ``WeightQuant`` / ``ActQuant`` replaced by the
trainable quantizer of the config's method, initialized with the calibrated grid).

convert = :func:`convert_learned`: each layer's weight becomes its quantized value and every
trainable quantizer a plain ``WeightQuant`` / ``ActQuant`` pinned to the learned grid. The converted
model computes exactly what the prepared model computes in eval mode (tested bit for bit).
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ...nn import ActQuant, WeightQuant
from ...nn.layers import is_quant_module
from ...nn.learned import (
    METHOD_BITS,
    BinaryWeightQuant,
    CodebookQuant,
    DoReFaActQuant,
    DoReFaWeightQuant,
    DSQQuant,
    KMeansWeightQuant,
    LearnedQuant,
    LSQQuant,
    PACTQuant,
    PoTWeightQuant,
    ShiftCNNWeightQuant,
    STEQuant,
    TernaryWeightQuant,
    TTQWeightQuant,
)
from ..ptq import quantize_ptq
from .config import QATConfig


def learned_quantizers(model: nn.Module) -> list[LearnedQuant]:
    """The trainable quantizers of a QAT-prepared model (each once)."""
    seen: dict[int, LearnedQuant] = {}
    for m in model.modules():
        if isinstance(m, LearnedQuant):
            seen.setdefault(id(m), m)
    return list(seen.values())


def quantize_qat(model: nn.Module, config: QATConfig) -> tuple[nn.Module, dict]:
    """Handler of :class:`QATConfig` (see the module docstring)."""
    prepared = bool(learned_quantizers(model))
    if config.step == "convert":
        if not prepared:
            raise ConfigError("QAT convert needs a model prepared with step='prepare' (and trained); this model has no "
                              "trainable quantizers: run quantize_(model, cfg.replace(step='prepare'), data=...) first")
        info = dict(getattr(model, "lowbit_info", {}) or {})
        info["qat_convert"] = convert_learned(model)
        return model, info
    if prepared:
        raise ConfigError("this model is already QAT-prepared; train it, then quantize_(model, cfg.replace(step='convert'))")
    return quantize_ptq(model, config)


def _weight_quantizer(q: WeightQuant, w: torch.Tensor, config: QATConfig, fallbacks: list[str], name: str) -> LearnedQuant:
    spec, method = q.spec, config.weight_method
    if method in METHOD_BITS and spec.format.bits not in METHOD_BITS[method]:  # e.g. the 8-bit first / last layers
        fallbacks.append(name)
        method = "lsq"
    special = {
        "dorefa": lambda: DoReFaWeightQuant(spec),
        "bwn": lambda: BinaryWeightQuant(spec, per_channel=True),
        "binary": lambda: BinaryWeightQuant(spec, per_channel=False),
        "twn": lambda: TernaryWeightQuant(spec),
        "ttq": lambda: TTQWeightQuant(spec, w, t=config.ttq_threshold),
        "pot": lambda: PoTWeightQuant(spec),
        "shiftcnn": lambda: ShiftCNNWeightQuant(spec, n_terms=config.shiftcnn_terms),
        "kmeans": lambda: KMeansWeightQuant(spec, w),
    }
    if method in special:
        return special[method]()
    s, z = q.qparams(w)
    cls = {"ste": STEQuant, "lsq": LSQQuant, "dsq": DSQQuant}[method]
    kw = {"alpha": config.dsq_alpha} if cls is DSQQuant else {}
    return cls(spec, s, z, is_weight=True, **kw)


def _activation_quantizer(q: ActQuant, config: QATConfig, fallbacks: list[str], name: str) -> LearnedQuant:
    spec, s, z = q.spec, q.scale, q.zero_point
    method = config.activation_method
    non_negative = not spec.format.signed and int(z.reshape(-1)[0]) == 0 and spec.granularity.name == "per_tensor"
    if method in ("pact", "dorefa") and not non_negative:
        fallbacks.append(name)
        method = "lsq"
    if method == "pact":
        return PACTQuant(spec, float(s) * spec.format.qmax, decay=config.pact_decay)
    cls = {"ste": STEQuant, "lsq": LSQQuant, "dsq": DSQQuant, "dorefa": DoReFaActQuant}[method]
    kw = {"alpha": config.dsq_alpha} if cls is DSQQuant else {}
    return cls(spec, s, z, **kw)


def attach_learned(model: nn.Module, config: QATConfig, inputs: list[torch.Tensor] | None = None) -> dict:
    """Refiner of the prepare step: swap every calibrated quantizer for a trainable one.

    Activation quantizers that share another's grid (``ActQuant.share_grid_with``) share the
    trainable module too, so the deployed graph still needs no requantization between them.
    PACT / DoReFa activations need a non-negative range and DoReFa weights an int8-free width
    (< 8 bits): the quantizers where that does not hold use LSQ and are listed.
    Returns ``{"qat": {"weights": n, "activations": n, "fallback_to_lsq": [...], ...}}``.
    """
    fallbacks: list[str] = []
    made: dict[int, LearnedQuant] = {}
    slots: dict[int, str] = {}
    shared: dict[str, str] = {}
    n_w = 0
    pending: list[tuple[nn.Module, str, ActQuant, str]] = []
    for mname, mod in model.named_modules():
        if is_quant_module(mod) and isinstance(mod.weight_quant, WeightQuant):
            mod.weight_quant = _weight_quantizer(mod.weight_quant, mod.weight, config, fallbacks, f"{mname}.weight_quant")
            n_w += 1
        for cname, child in mod.named_children():
            if isinstance(child, ActQuant) and not child.spec.dynamic:
                pending.append((mod, cname, child, f"{mname}.{cname}" if mname else cname))
    for mod, cname, child, full in sorted(pending, key=lambda p: p[2].grid_source is not None):  # sources first
        src = child.grid_source
        if src is not None and id(src) in made:
            learned = made[id(src)]
            shared[full] = slots[id(src)]
        else:
            learned = _activation_quantizer(child, config, fallbacks, full)
            slots[id(child)] = full
        made[id(child)] = learned
        setattr(mod, cname, learned)
    model.train()
    return {"qat": {"weight_method": config.weight_method, "activation_method": config.activation_method,
                    "weights": n_w, "activations": len({id(v) for v in made.values()}), "shared": shared,
                    "fallback_to_lsq": fallbacks, "bn": "folded before training"}}


@torch.no_grad()
def convert_learned(model: nn.Module) -> dict:
    """Freeze every trainable quantizer into a plain one on its learned grid (see module docstring)."""
    model.eval()
    shared = (getattr(model, "lowbit_info", None) or {}).get("qat", {}).get("shared", {})
    layers = 0
    slots: dict[str, ActQuant] = {}
    sharers: list[tuple[nn.Module, str, str]] = []
    for mname, mod in list(model.named_modules()):
        wq = getattr(mod, "weight_quant", None)
        if is_quant_module(mod) and isinstance(wq, LearnedQuant):
            wq_values = wq(mod.weight)
            grid = wq.frozen_grid(mod.weight)
            if grid is None:  # non-uniform values: a frozen codebook
                codebook = wq.frozen_codebook(mod.weight)
                mod.weight.data.copy_(wq_values)
                mod.weight_quant = CodebookQuant(wq.spec, codebook, wq.method)
            else:
                spec, s, z = grid
                mod.weight.data.copy_(wq_values)
                plain = WeightQuant(spec)
                plain.set_qparams(mod.weight, s, z)
                mod.weight_quant = plain
            layers += 1
        for cname, child in list(mod.named_children()):
            if not isinstance(child, LearnedQuant) or child.is_weight:
                continue
            full = f"{mname}.{cname}" if mname else cname
            if full in shared:
                sharers.append((mod, cname, full))
                continue
            spec, s, z = child.frozen_grid()
            aq = ActQuant(spec)
            aq.set_qparams(s, z)
            slots[full] = aq
            setattr(mod, cname, aq)
    for mod, cname, full in sharers:  # the same grid-sharing structure PTQ builds (export, packing rely on it)
        src = slots[shared[full]]
        aq = ActQuant(src.spec)
        aq.share_grid_with(src)
        aq.set_qparams(src.scale, src.zero_point)
        setattr(mod, cname, aq)
    for p in model.parameters():
        p.requires_grad_(True)
    return {"layers": layers, "activation_grids": len(slots), "shared_grids": len(sharers)}

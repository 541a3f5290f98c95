"""PTQ handler: fold BN -> pick layers -> per-layer specs -> swap modules -> quantize adds -> calibrate."""

from __future__ import annotations

import warnings

from torch import nn

from ...config import QuantSpec
from ...errors import ConfigError, UnsupportedError
from ...nn import QUANT_MODULES
from ...quant import PerGroup, PerTensor
from ...quant.granularity import largest_divisor_at_most
from ...transform import FoldBatchNorm, quantizable_layers, quantize_functional_ops, resolve, select_layers, set_submodule
from .config import PTQConfig


def _layer_specs(model: nn.Module, config: PTQConfig) -> dict[str, dict]:
    candidates = [n for n in quantizable_layers(model) if type(model.get_submodule(n)) in QUANT_MODULES]
    if not candidates:
        raise UnsupportedError(
            f"{type(model).__name__} has no quantizable layer (lowbit quantizes {sorted(t.__name__ for t in QUANT_MODULES)})"
        )
    chosen = select_layers(model, candidates, config.layers, config.exclude)
    specs = {n: {"weight": config.weight, "activation": config.activation} for n in chosen}
    for ov in config.overrides:
        for n in resolve(ov.select, model, candidates):
            if n not in specs:
                continue
            for key in ("weight", "activation"):
                v = getattr(ov, key)
                if v != "inherit":
                    specs[n][key] = v
    return specs


def _apply_group_policy(name: str, mod: nn.Module, spec: QuantSpec | None, policy: str, info: dict) -> QuantSpec | None | str:
    if spec is None or not isinstance(spec.granularity, PerGroup):
        return spec
    channels = mod.weight.shape[1]
    g = spec.granularity.size
    if channels % g == 0:
        return spec
    if policy == "error":
        raise ConfigError(
            f"layer {name}: group_size={g} does not divide its {channels} input channels; pick a divisor, "
            "or set group_policy to 'adjust' (largest divisor) or 'ignore' (keep the layer float)"
        )
    if policy == "ignore":
        info["skipped"].append({"layer": name, "reason": f"group_size {g} does not divide {channels} channels"})
        warnings.warn(f"lowbit: layer {name} kept float (group_size {g} does not divide {channels})", stacklevel=4)
        return "skip"
    d = largest_divisor_at_most(channels, g)
    info["adjusted"].append({"layer": name, "group_size": d, "requested": g})
    return spec.replace(group_size=d)


def quantize_ptq(model: nn.Module, config: PTQConfig) -> tuple[nn.Module, dict]:
    """Prepare ``model`` for PTQ (no calibration here). Returns ``(model, info)``.

    The model is changed in place; when residual adds are captured the returned model is a
    ``torch.fx.GraphModule`` sharing the original's submodules — use the returned object.
    """
    info: dict = {"folded": [], "skipped": [], "adjusted": [], "adds": [], "pools": [], "layers": {}}
    model.eval()
    if not quantizable_layers(model):
        raise UnsupportedError(
            f"{type(model).__name__} has no quantizable layer (lowbit quantizes {sorted(t.__name__ for t in QUANT_MODULES)})"
        )
    if config.fold_bn:
        fold = FoldBatchNorm()
        model = fold.apply(model)
        info["folded"] = [list(p) for p in fold.folded]
    specs = _layer_specs(model, config)
    for name, s in specs.items():
        mod = model.get_submodule(name)
        w = _apply_group_policy(name, mod, s["weight"], config.group_policy, info)
        if w == "skip":
            continue
        a = s["activation"]
        if w is None and a is None:
            info["skipped"].append({"layer": name, "reason": "override keeps it float"})
            continue
        qmod = QUANT_MODULES[type(mod)].from_float(mod, w, a)
        set_submodule(model, name, qmod)
        info["layers"][name] = {
            "type": type(mod).__name__,
            "weight": w.describe() if w is not None else "float",
            "activation": a.describe() if a is not None else "float",
            "weight_bits": w.bits if w is not None else 32,
            "activation_bits": a.bits if a is not None else 32,
        }
    if config.quantize_adds and config.activation is not None:
        add_spec = config.add_activation if config.add_activation is not None else config.activation
        if not isinstance(add_spec.granularity, PerTensor):
            add_spec = add_spec.replace(granularity="per_tensor")
        model, found = quantize_functional_ops(model, add_spec)
        info["adds"], info["pools"] = found["adds"], found["pools"]
        info["shared_grids"] = found.get("shared_grids", [])
    return model, info

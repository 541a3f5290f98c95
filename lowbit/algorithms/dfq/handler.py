"""DFQ handler and refiner: ReLU6 -> ReLU, BN statistics, BN folding, cross-layer equalization,
high-bias absorption, PTQ, bias correction, and (without data) activation ranges from BN statistics.

Bias correction: the quantized weight ``W~ = W + eps`` shifts a layer's expected output by
``E[eps x] = eps E[x]``; subtracting it from the bias removes the bias of the quantization error.
``E[x]`` per input channel comes from the previous layer's BN statistics through its activation
(analytic: rectified-Gaussian mean, see :func:`relu_moments`) or from the calibration data (empirical).

Data-free activation ranges: every tensor carries per-channel ``(mean, var, lo, hi)`` propagated
through the graph — a conv with BN statistics gives ``N(beta, gamma^2)``, a layer without BN the
linear map of its input moments, ReLU / ReLU6 rectified-Gaussian moments, an add the sum (independent
branches); ``[lo, hi] = [min_c(mean - k sigma), max_c(mean + k sigma)]`` with ``k`` the optimal
Gaussian clip for the quantizer's bit width (ACIQ), clamped to 0 after ReLU.

Example:
    >>> import lowbit
    >>> from lowbit.algorithms.dfq import DFQConfig
    >>> from lowbit.zoo import load_model
    >>> q = lowbit.quantize_(load_model("fmnist-resnet"), DFQConfig())   # no data at all
    >>> all(a.calibrated for a in lowbit.activation_quantizers(q)), len(q.lowbit_info["equalized_pairs"])
    (True, 3)
"""

from __future__ import annotations

import math
import operator
import warnings

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, UnsupportedError
from ...nn import ActQuant, QuantAdd
from ...nn.layers import is_quant_module
from ...observe.histogram import aciq_alpha
from ...quant import choose_qparams
from ...transform import FoldBatchNorm
from ...transform.graph import trace
from ..ptq import quantize_ptq
from .config import DFQConfig
from .equalize import absorb_high_bias, bn_statistics, clipped_moments, equalization_pairs, equalize


def _relu6_to_relu(model: nn.Module) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU6)]
    for n in names:
        parent, _, child = n.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.ReLU())
    return names


def _expected_shift(mod: nn.Module, eps: torch.Tensor, mean_in: torch.Tensor) -> torch.Tensor:
    """``E[eps x]`` per output channel for input-channel means ``mean_in``."""
    cin = eps.shape[1] * getattr(mod, "groups", 1)
    if mean_in.numel() == 1:
        mean_in = mean_in.reshape(1).expand(cin)
    elif mean_in.numel() != cin:
        if cin % mean_in.numel():
            raise UnsupportedError(f"{mean_in.numel()} channel statistics cannot feed {cin} inputs")
        mean_in = mean_in.repeat_interleave(cin // mean_in.numel())  # flatten of a (C, H, W) map
    if getattr(mod, "groups", 1) > 1:
        if eps.shape[1] != 1:
            raise UnsupportedError("bias correction of grouped (non-depthwise) convs is not supported")
        return eps.flatten(1).sum(1) * mean_in
    return eps.flatten(2).sum(2) @ mean_in if eps.ndim > 2 else eps @ mean_in


@torch.no_grad()
def _correct_bias(mod: nn.Module, mean_in: torch.Tensor) -> float:
    eps = mod.quantized_weight().detach() - mod.weight.detach()
    shift = _expected_shift(mod, eps, mean_in.to(eps.dtype))
    if mod.bias is None:
        mod.bias = nn.Parameter(-shift)
    else:
        mod.bias.sub_(shift)
    return float(shift.abs().max())


class _Moments:
    """Per-channel ``mean``, ``var`` and value range ``[lo, hi]`` of a tensor."""

    __slots__ = ("mean", "var", "lo", "hi")

    def __init__(self, mean, var, lo=None, hi=None, k: float = 4.0):
        self.mean, self.var = mean, var
        sd = var.clamp_min(0).sqrt()
        self.lo = lo if lo is not None else float((mean - k * sd).min())
        self.hi = hi if hi is not None else float((mean + k * sd).max())

    def relu(self, six: bool = False) -> _Moments:
        m, v = clipped_moments(self.mean, self.var.clamp_min(1e-12).sqrt(), 0.0, 6.0 if six else math.inf)
        hi = min(self.hi, 6.0) if six else self.hi
        return _Moments(m, v, max(self.lo, 0.0), max(hi, 1e-8))


def _k(aq: ActQuant) -> float:
    return aciq_alpha(1.0, 2 ** aq.spec.format.bits, "gaussian")


def _set_range(aq: ActQuant, mom: _Moments, k: float) -> None:
    if aq.spec.dynamic or aq.grid_source is not None:
        return
    sd = mom.var.clamp_min(0).sqrt()
    lo = max(mom.lo, float((mom.mean - k * sd).min())) if mom.lo >= 0 else float((mom.mean - k * sd).min())
    hi = min(mom.hi, float((mom.mean + k * sd).max())) if mom.lo >= 0 else float((mom.mean + k * sd).max())
    lo, hi = min(lo, 0.0), max(hi, lo + 1e-6)
    scale, zp = choose_qparams(torch.tensor(lo), torch.tensor(hi), aq.spec.format, aq.spec.mapping)
    aq.set_qparams(scale.reshape(()), zp.reshape(()))


@torch.no_grad()
def propagate_bn_statistics(model: nn.Module, stats: dict, config: DFQConfig, correct: bool, calibrate: bool) -> dict:
    """Walk the quantized graph with per-channel moments: analytic bias correction (``correct``) and
    data-free activation ranges (``calibrate``). Returns ``{"corrected": {layer: max |shift|}, "uncorrected": [...]}``."""
    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    mods = dict(gm.named_modules())
    lo, hi = config.input_range
    env: dict[fx.Node, _Moments | object] = {}
    corrected, uncorrected = {}, []
    raw_input: _Moments | None = None

    def act(aq, mom):
        if calibrate:
            _set_range(aq, mom, _k(aq))
        return mom

    for node in gm.graph.nodes:
        args = [env.get(a) if isinstance(a, fx.Node) else a for a in node.args]
        x = args[0] if args else None
        if node.op == "placeholder":
            env[node] = raw_input = _Moments(torch.tensor([(lo + hi) / 2]), torch.tensor([(hi - lo) ** 2 / 12]), lo, hi)
            continue
        if node.op == "output":
            break
        mod = mods.get(node.target) if node.op == "call_module" else None
        if is_quant_module(mod):
            if mod.input_quant is not None:
                act(mod.input_quant, x)
            if correct and mod.weight_quant is not None:
                if x is raw_input:  # the model input's mean is not known without data
                    uncorrected.append(node.target)
                else:
                    corrected[node.target] = _correct_bias(mod, x.mean)
            if node.target in stats:
                beta, gamma = stats[node.target]
                out = _Moments(beta.clone(), gamma * gamma)
            else:  # linear map of the input moments (independent inputs)
                w = mod.weight.detach()
                b = mod.bias.detach() if mod.bias is not None else torch.zeros(w.shape[0])
                out = _Moments(_expected_shift(mod, w, x.mean) + b, _expected_shift(mod, w * w, x.var))
            if mod.output_quant is not None:
                act(mod.output_quant, out)
            env[node] = out
        elif isinstance(mod, ActQuant):
            env[node] = act(mod, x)
        elif isinstance(mod, QuantAdd):
            a, b = args[0], args[1]
            act(mod.input_quant_a, a)
            act(mod.input_quant_b, b)
            s = _Moments(a.mean + b.mean, a.var + b.var)
            if mod.fused_relu:
                s = s.relu()
            env[node] = act(mod.output_quant, s)
        elif isinstance(mod, nn.ReLU) or (node.op == "call_function" and node.target in (F.relu, torch.relu)):
            env[node] = x.relu()
        elif isinstance(mod, nn.ReLU6) or (node.op == "call_function" and node.target is F.relu6):
            env[node] = x.relu(six=True)
        elif isinstance(mod, nn.Identity | nn.Dropout | nn.Flatten | nn.AdaptiveAvgPool2d | nn.AvgPool2d | nn.MaxPool2d) or (
            node.op == "call_function" and node.target in (torch.flatten, torch.reshape, F.adaptive_avg_pool2d, F.avg_pool2d)
        ) or (node.op == "call_method" and node.target in ("flatten", "view", "reshape", "contiguous")):
            env[node] = x  # per-channel moments kept (pooling: conservative, variance not reduced)
        elif node.op == "call_function" and node.target in (operator.add, torch.add) and all(isinstance(a, _Moments) for a in args[:2]):
            env[node] = _Moments(args[0].mean + args[1].mean, args[0].var + args[1].var)
        elif node.op in ("call_method", "call_function") and node.target in ("size", getattr, operator.getitem):
            env[node] = None
        else:
            what = type(mod).__name__ if mod is not None else getattr(node.target, "__name__", str(node.target))
            raise UnsupportedError(
                f"BatchNorm-statistics propagation cannot pass {what} (node {node.name}); "
                "use activation_calibration: data (and bias_correction: empirical) with calibration images"
            )
    return {"corrected": corrected, "uncorrected": uncorrected}


def quantize_dfq(model: nn.Module, config: DFQConfig) -> tuple[nn.Module, dict]:
    """Handler of :class:`DFQConfig` (see the module docstring)."""
    info: dict = {"relu6_replaced": _relu6_to_relu(model) if config.relu6_to_relu else []}
    stats = bn_statistics(model)
    needs_bn = [what for what, on in (("analytic bias correction", config.bias_correction == "analytic"),
                                      ("activation ranges without data (activation_calibration: bn)",
                                       config.activation_calibration == "bn" and config.activation is not None),
                                      ("high-bias absorption", config.absorb_bias)) if on]
    if not stats and needs_bn:
        raise ConfigError(
            f"{type(model).__name__} has no BatchNorm layers, which {', '.join(needs_bn)} need(s); "
            "use absorb_bias: false, bias_correction: empirical and activation_calibration: data, with calibration images"
        )
    fold = FoldBatchNorm()
    fold.apply(model)
    pairs, skipped = equalization_pairs(model)
    info["equalization_skipped"] = list(skipped)
    notable = [s for s in skipped if "ReLU6" in s["reason"] or "grouped" in s["reason"] or "traced" in s["reason"]]
    if notable or (config.equalize and not pairs):
        skipped = notable or skipped
        warnings.warn("cross-layer equalization skipped: " + "; ".join(f"{s['layer']}: {s['reason']}" for s in skipped[:4])
                      + (f" (+{len(skipped) - 4} more, see lowbit_info)" if len(skipped) > 4 else ""), stacklevel=3)
    info["equalized_pairs"] = [f"{a} -> {b}" for a, b, _ in pairs] if config.equalize else []
    if config.equalize and pairs:
        info["equalization"] = equalize(model, pairs, stats)
    info["absorbed_bias"] = absorb_high_bias(model, pairs, stats, config.n_sigma) if config.absorb_bias else {}
    model, pinfo = quantize_ptq(model, config)
    pinfo["folded"] = fold.folded
    info.update(pinfo)
    correct = config.bias_correction == "analytic"
    calibrate = config.activation_calibration == "bn" and config.activation is not None
    if correct or calibrate:
        res = propagate_bn_statistics(model, stats, config, correct, calibrate)
        info["bias_corrected"], info["bias_uncorrected"] = res["corrected"], res["uncorrected"]
        if calibrate:
            for m in model.modules():
                if isinstance(m, ActQuant) and m.grid_source is not None:
                    m.set_qparams(m.grid_source.scale, m.grid_source.zero_point)
    return model, info


@torch.no_grad()
def empirical_bias_correction(model: nn.Module, config: DFQConfig, inputs: list[torch.Tensor]) -> dict:
    """Refiner: ``b -= eps E[x]`` with ``E[x]`` measured on the calibration inputs of each layer."""
    if config.bias_correction != "empirical":
        return {}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    layers = {n: m for n, m in model.named_modules() if is_quant_module(m) and m.weight_quant is not None}

    def hook(name):
        def fn(mod, args):
            x = args[0].detach()
            dims = [0] + list(range(2, x.ndim)) if x.ndim > 2 else [0]
            sums[name] = sums.get(name, 0) + x.sum(dims)
            counts[name] = counts.get(name, 0) + x.numel() // x.shape[1]
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        was = model.training
        model.eval()
        for x in inputs:
            model(x)
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    return {"bias_corrected": {n: _correct_bias(m, sums[n] / counts[n]) for n, m in layers.items() if n in sums}}

"""AdaRound refiner: learn, layer by layer, whether each weight rounds up or down.

Nearest rounding minimizes the error of every weight on its own, not the error of the layer's
output. AdaRound (Nagel et al., 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization") keeps the weight quantizer's grid ``(S, Z)`` and learns, per weight, a continuous
variable ``V`` whose rectified sigmoid picks the rounding direction:

    h(V)   = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)          zeta = 1.1, gamma = -0.1
    W_soft = S * (clamp(floor(W / S) + h(V) + Z, qmin, qmax) - Z)

and minimizes, over a random batch of calibration samples each step (Adam),

    L(V) = E[ || f(layer(x_q; W_soft)) - f(layer_float(x)) ||^2 ] + lambda * sum(1 - |2 h(V) - 1|^beta)

* ``x_q`` is the layer's input in the *quantized* model (earlier layers already AdaRounded,
  activations fake-quantized with their calibrated grids), passed through the layer's own input
  quantizer; ``layer_float(x)`` is the layer's output in the float model (original float weights,
  every quantizer bypassed, see :func:`quantizers_bypassed`): the paper's asymmetric reconstruction,
  which lets the rounding also absorb the error that reaches the layer's input.
* ``f`` is the elementwise activation (ReLU, ReLU6, ...) that is the only reader of the layer's
  output in the fx graph (through a folded BatchNorm's Identity), else the identity
  (``activation_in_loss=False``: always the identity). Errors the activation erases cost nothing.
* The squared error is summed over output channels and averaged over samples and positions
  (the per-output-vector form of the paper's Frobenius norm).
* ``V`` starts where ``h(V) = W / S - floor(W / S)`` (the soft weight equals the float weight).
* The regularizer is off for the first ``warmup`` fraction of the steps; then ``beta`` falls
  linearly from ``beta_start`` to ``beta_end``, pushing every ``h`` to 0 or 1.

At the end ``q = clamp(floor(W / S) + [h(V) >= 0.5] + Z, qmin, qmax)``, so each code is the
nearest code or its neighbour. The layer's weight becomes ``S * (q - Z)`` and the weight quantizer's
qparams are pinned to ``(S, Z)``: fake-quantization, ONNX export, the packed format and the integer
engine all see ``q`` (nearest rounding of ``S * (q - Z)`` on that grid gives back ``q``).

Example:
    >>> import torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> from lowbit.algorithms.adaround import AdaRoundConfig
    >>> torch.manual_seed(0) and None
    >>> data = [torch.randn(64, 1, 28, 28)]
    >>> w4 = lowbit.QuantSpec(format=lowbit.IntFormat(bits=4), granularity=lowbit.PerChannel(axis=0))
    >>> cfg = AdaRoundConfig(weight=w4, iters=60, min_samples_warn=0)
    >>> q = lowbit.quantize_(FmnistMLP(), cfg, data=data)
    >>> fc1 = q.lowbit_info["adaround"]["fc1"]
    >>> fc1["loss_after"] < fc1["loss_before"]
    True
"""

from __future__ import annotations

import copy
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..._progress import track
from ...errors import ConfigError, UnsupportedError
from ...nn import ActQuant, WeightQuant
from ...nn.layers import is_quant_module
from ...quant import fake_quantize, quantize
from ...transform.graph import trace
from .config import AdaRoundConfig

ZETA, GAMMA = 1.1, -0.1
_CHUNK = 256  # samples per no-grad forward when capturing / scoring


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``: reaches exactly 0 and 1 at finite ``V``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = h`` for ``h`` in ``[0, 1)``: ``logit((h - gamma) / (zeta - gamma))``."""
    return torch.logit((h - GAMMA) / (ZETA - GAMMA))


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """``sum(1 - |2h - 1|^beta)``: 0 when every ``h`` is 0 or 1; a large ``beta`` leaves values away from 0.5 alone."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def _identity(x):
    return x


@contextmanager
def quantizers_bypassed(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every ``ActQuant`` / ``WeightQuant`` of ``model`` returns its input unchanged
    (the model computes in float); restored on any exit. Calibrated qparams are not touched.

    Example:
        >>> import torch, lowbit
        >>> from lowbit.zoo.models import FmnistMLP
        >>> torch.manual_seed(0) and None
        >>> model, x = FmnistMLP(), torch.randn(4, 1, 28, 28)
        >>> ref = model(x)
        >>> q = lowbit.quantize_(model, lowbit.load_recipe("w4a4"), data=[torch.randn(16, 1, 28, 28)])
        >>> with quantizers_bypassed(q):
        ...     torch.equal(q(x), ref)
        True
        >>> torch.equal(q(x), ref)
        False
    """
    missing = object()
    mods = [m for m in model.modules() if isinstance(m, ActQuant | WeightQuant)]
    saved = [(m, m.__dict__.get("forward", missing)) for m in mods]
    try:
        for m in mods:
            m.forward = _identity  # instance attribute shadows the class's forward
        yield model
    finally:
        for m, fwd in saved:
            if fwd is missing:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = fwd


@contextmanager
def _float_model(model: nn.Module, weights: dict[nn.Module, torch.Tensor]) -> Iterator[nn.Module]:
    """Quantizers bypassed and the layers in ``weights`` computing with those (their original float)
    weights: the float model, even after earlier layers were rewritten with their rounded weights."""
    saved = {m: m.weight.data for m in weights}
    try:
        for m, w in weights.items():
            m.weight.data = w  # a swap of the tensor behind the parameter: its version and pinned qparams stay
        with quantizers_bypassed(model):
            yield model
    finally:
        for m, w in saved.items():
            m.weight.data = w


class _Stop(Exception):
    """Raised by a capture hook once it has what it needs (the rest of the forward is skipped)."""


def _execution_order(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor) -> tuple[list[str], Counter]:
    """Names of ``layers`` in the order a forward pass first calls them, and how often each is called."""
    order: list[str] = []
    calls: Counter = Counter()
    handles = []
    for name, mod in layers.items():
        def hook(_mod, _args, name=name):
            if not calls[name]:
                order.append(name)
            calls[name] += 1

        handles.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order, calls


def _capture(model: nn.Module, layer: nn.Module, calls: int, inputs: list[torch.Tensor], what: str) -> torch.Tensor | None:
    """``layer``'s input (``what="input"``) or output (``"output"``) over every batch of ``inputs``, rows
    concatenated (a layer called several times per forward contributes one row block per call).
    The forward stops as soon as the layer has been called ``calls`` times. None if shapes disagree."""
    per_call: list[list[torch.Tensor]] = [[] for _ in range(calls)]
    seen = 0

    def grab(t: torch.Tensor) -> None:
        nonlocal seen
        per_call[seen].append(t.detach())
        seen += 1
        if seen == calls:
            raise _Stop

    if what == "input":
        handle = layer.register_forward_pre_hook(lambda _m, args: grab(args[0]))
    else:
        handle = layer.register_forward_hook(lambda _m, _args, out: grab(out))
    try:
        with torch.no_grad():
            for x in inputs:
                for xc in x.split(_CHUNK):
                    seen = 0
                    try:
                        model(xc)
                    except _Stop:
                        pass
    finally:
        handle.remove()
    blocks = [torch.cat(c) for c in per_call if c]
    if not blocks or any(b.shape[1:] != blocks[0].shape[1:] for b in blocks):
        return None
    return torch.cat(blocks)


_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh)
_PASS_THROUGH = (nn.Identity, nn.Dropout)  # folded BatchNorms become Identity


def _activations_after(model: nn.Module, names: set[str]) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Layer name -> the elementwise activation that is the only reader of its output (through Identity /
    Dropout), read from the fx graph; layers whose output goes elsewhere (an add, another layer) are absent.
    A model torch.fx cannot trace gets no entries."""
    try:
        gm = model if isinstance(model, fx.GraphModule) else trace(model)
    except UnsupportedError:
        return {}
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in names:
            continue
        user = node
        while len(user.users) == 1:
            (user,) = user.users
            if user.op == "call_module":
                mod = gm.get_submodule(user.target)
                if isinstance(mod, _PASS_THROUGH):
                    continue
                if isinstance(mod, _ELEMENTWISE):
                    if getattr(mod, "inplace", False):  # the loss applies it to tensors autograd still needs
                        mod = copy.copy(mod)
                        mod.inplace = False
                    out[node.target] = mod
            elif user.op == "call_function" and user.target in (F.relu, torch.relu) and len(user.args) == 1 and not user.kwargs:
                out[node.target] = torch.relu
            elif user.op == "call_method" and user.target == "relu" and len(user.args) == 1:
                out[node.target] = torch.relu
            break
    return out


def _layer_forward(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's op with a given weight (input quantization already applied to ``x``)."""
    bias = layer.bias.detach() if layer.bias is not None else None
    y = F.linear(x, weight, bias) if isinstance(layer, nn.Linear) else layer._conv_forward(x, weight, bias)
    if layer.output_quant is not None:
        y = layer.output_quant(y)
    return y


def _reconstruction_loss(y: torch.Tensor, target: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Squared error summed over output channels, averaged over samples and positions."""
    d = (y - target).pow(2)
    return d.sum(channel_dim).mean() if d.ndim > 1 else d.mean()


def _channel_dim(layer: nn.Module) -> int:
    return -1 if isinstance(layer, nn.Linear) else 1  # Linear: (..., out_features); Conv: (N, C_out, *spatial)


@torch.no_grad()
def _full_loss(layer: nn.Module, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, act: Callable) -> float:
    total = 0.0
    for xc, tc in zip(x.split(_CHUNK), target.split(_CHUNK), strict=True):
        total += float(_reconstruction_loss(act(_layer_forward(layer, xc, weight)), tc, _channel_dim(layer))) * xc.shape[0]
    return total / x.shape[0]


def adaround_layer(
    layer: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    config: AdaRoundConfig,
    generator: torch.Generator,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Learn the rounding of ``layer``'s weight (see the module docstring), write ``S * (q - Z)`` into
    ``layer.weight`` and pin the weight quantizer's qparams. ``x``: the layer's raw inputs in the
    quantized model; ``target``: its float outputs. Returns the layer's losses and flipped share."""
    wq: WeightQuant = layer.weight_quant
    fmt, gran = wq.spec.format, wq.spec.granularity
    w = layer.weight.detach()
    scale, zero_point = (t.detach().clone() for t in wq.qparams(layer.weight))
    wv = gran.view(w.float())
    s = scale.float().reshape(-1, 1).to(w.device)
    z = zero_point.float().reshape(-1, 1).to(w.device)
    w_floor = torch.floor(wv / s)

    def weight_from(h: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(w_floor + h + z, fmt.qmin, fmt.qmax)
        return gran.unview(s * (q - z), w.shape).to(w.dtype)

    act = activation or _identity
    x = x.to(w.device)
    target = act(target.to(w.device))
    if layer.input_quant is not None:
        with torch.no_grad():
            x = torch.cat([layer.input_quant(xc) for xc in x.split(_CHUNK)])
    nearest = fake_quantize(w, scale, zero_point, fmt, gran, wq.spec.rounding)
    loss_before = _full_loss(layer, x, target, nearest, act)

    v = inverse_rectified_sigmoid(wv / s - w_floor).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=config.lr)
    n = x.shape[0]
    batch = min(config.batch_size, n)
    warm = int(config.warmup * config.iters)
    with torch.enable_grad():
        for it in range(config.iters):
            idx = torch.randperm(n, generator=generator)[:batch].to(w.device)
            h = rectified_sigmoid(v)
            loss = _reconstruction_loss(act(_layer_forward(layer, x[idx], weight_from(h))), target[idx], _channel_dim(layer))
            if it >= warm and config.reg_weight > 0:
                progress = (it - warm) / max(1, config.iters - warm)
                beta = config.beta_start + (config.beta_end - config.beta_start) * progress
                loss = loss + config.reg_weight * rounding_regularizer(h, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    with torch.no_grad():
        up = (rectified_sigmoid(v) >= 0.5).float()
        new_weight = weight_from(up)
        loss_after = _full_loss(layer, x, target, new_weight, act)
        codes = gran.unview(torch.clamp(w_floor + up + z, fmt.qmin, fmt.qmax), w.shape)
        nearest_codes = quantize(w, scale, zero_point, fmt, gran, wq.spec.rounding).float()
        flipped = float((codes != nearest_codes).float().mean()) * 100.0
        layer.weight.copy_(new_weight)
    wq.set_qparams(layer.weight, scale, zero_point)
    act_name = None if activation is None else getattr(activation, "__name__", type(activation).__name__)
    return {"loss_before": loss_before, "loss_after": loss_after, "flipped_pct": flipped, "samples": n, "activation": act_name}


def refine_adaround(model: nn.Module, config: AdaRoundConfig, inputs: list[torch.Tensor]) -> dict:
    """The AdaRound refiner (registered for :class:`AdaRoundConfig`): every quantized layer with a
    weight quantizer, in execution order, through :func:`adaround_layer`.

    Returns ``{"adaround": {layer: {"loss_before", "loss_after", "flipped_pct", "samples", "activation"}},
    "adaround_seconds": ...}`` (plus ``"adaround_skipped"`` when a layer could not be refined, with a
    warning): the reconstruction losses of nearest and of learned rounding on all calibration samples,
    the share of codes that differ from nearest rounding, and the activation used in the loss.

    Raises:
        ConfigError: the model has no layer with a weight quantizer.
    """
    t0 = time.perf_counter()
    n = sum(int(x.shape[0]) for x in inputs)
    if n < config.min_samples_warn:
        warnings.warn(
            f"lowbit: AdaRound got {n} calibration samples, fewer than min_samples_warn={config.min_samples_warn}; "
            "the learned rounding may fit these samples only — pass more data (and calib_size)",
            stacklevel=3,
        )
    layers = {name: m for name, m in model.named_modules() if is_quant_module(m) and m.weight_quant is not None}
    if not layers:
        raise ConfigError("AdaRound found no layer with a weight quantizer; give the config a weight spec that reaches some layer")
    was_training = model.training
    model.eval()
    info: dict = {"adaround": {}}
    skipped: list[dict] = []
    try:
        order, calls = _execution_order(model, layers, inputs[0][:8])
        skipped += [{"layer": name, "reason": "not called by a forward pass"} for name in layers if name not in calls]
        generator = torch.Generator().manual_seed(config.seed)
        float_weights = {m: m.weight.detach().clone() for m in layers.values()}
        acts = _activations_after(model, set(layers)) if config.activation_in_loss else {}
        for name in track(order, "AdaRound"):
            layer = layers[name]
            with _float_model(model, float_weights):
                target = _capture(model, layer, calls[name], inputs, "output")
            x = _capture(model, layer, calls[name], inputs, "input")
            if x is None or target is None or x.shape[0] != target.shape[0]:
                skipped.append({"layer": name, "reason": "its calls see inputs of different shapes"})
                continue
            info["adaround"][name] = adaround_layer(layer, x, target, config, generator, acts.get(name))
    finally:
        model.train(was_training)
    if skipped:
        info["adaround_skipped"] = skipped
        warnings.warn(f"lowbit: AdaRound kept nearest rounding for {[s['layer'] for s in skipped]} ({skipped[0]['reason']}, ...)", stacklevel=3)
    info["adaround_seconds"] = time.perf_counter() - t0
    return info

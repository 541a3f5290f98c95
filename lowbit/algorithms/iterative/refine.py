"""Iterative adaptation to quantization noise (Chudakov, Alyamkin, Goncharenko, Denisov, IWANN 2021).

Post-training quantization quantizes every layer at once and can only pick thresholds; at
2-4 bits the noise left after the best thresholds is still large. Here the network is quantized
one step at a time, and after each step the layers that are still float are trained to work
with the noise the quantized ones now inject, so that the network's output stays close to the
float network's. It needs only unlabeled calibration inputs and is far cheaper than
quantization-aware training from scratch.

Schedule. ``quantize_`` first runs the PTQ handler and calibrates every activation quantizer
(:class:`lowbit.PTQConfig`); then this refiner splits the quantized modules, in the order the
forward pass runs them, into steps ``U_1 .. U_K``:

* ``granularity: layer`` — one step per quantized layer (its weight and input quantizers),
  together with the residual-add (``QuantAdd``) and pooling quantizers that run after it and
  before the next layer;
* ``granularity: block`` (default) — consecutive layers up to and including the next residual
  add (again with the quantizers that follow it before the next layer), at most ``block_size``
  layers; on a ResNet a step is one basic block.

Let ``f`` be the float network (every quantizer pass-through) and ``y(x) = f(x)`` its outputs
(logits) on the calibration inputs ``X``, computed once. Step ``k`` enables the quantizers of
``U_1 .. U_k`` (those of ``U_{k+1} .. U_K`` stay pass-through, so those layers compute in float)
and trains the weights and biases ``theta_{>k}`` of the layers in ``U_{k+1} .. U_K``::

    g_k(x)       = network with U_1..U_k quantized, U_{k+1}..U_K float
    L(theta_{>k}) = 1/|X| sum_x  1/C ||g_k(x) - y(x)||^2                 (loss: mse, C outputs)
    theta_{>k}  <- epochs_per_step passes of minibatch Adam / SGD on L   (lr, batch_size)

``theta_{<=k}`` is frozen: once a layer is quantized its float master weight never changes
again, and its weight quantizer's scale is the one computed from it when it was enabled
(``WeightQuant`` recomputes qparams whenever the weight tensor changes, so a layer trained in
step ``k`` gets fresh weight qparams when step ``k' > k`` enables it). Only the weights and biases
of quantized layers are trained (not the activation ranges, not layers the config keeps float).
Every step starts a fresh optimizer at the constant learning rate ``lr``: the later layers
chase a fixed target, and decaying the rate within a step left them measurably further from it
(output MSE ~20 % higher on the W4A4 ResNet).

The last step has no later layers and trains nothing, so the noise of the last steps is only
compensated by the few layers after them. ``final_epochs > 0`` then trains every layer with all
quantizers on (straight-through gradients through ``fake_quantize``) on the same loss: a short
distillation-style QAT on the calibration inputs that deliberately lifts the freezing. Its
learning rate decays along a half cosine, ``lr_t = lr (1 + cos(pi t / T)) / 2`` over its ``T``
minibatches, so the weights settle on their rounding grid at the end. At 4 bits it is a small
correction; at 2 bits the noise of the last layers dominates without it.

Recalibration (``recalibrate: true``). The activation ranges from the initial calibration were
observed on the float network; after step ``k`` the inputs of the quantizers of ``U_{k+1} ..
U_K`` differ (earlier layers are noisy, later ones trained), so they observe ``X`` again through
``g_k`` (with their observer of the spec, e.g. MSE) and freeze new ``(scale, zero_point)``.
Quantizers that share another quantizer's grid copy it, as in calibration. Enabled quantizers
are never re-observed, so the final model's ranges are the ones each quantizer got just before
it was enabled; no further recalibration is done at the end (with ``final_epochs`` the
ranges stay as they were, as in QAT).

Cost: ``(K - 1) * epochs_per_step + final_epochs`` training passes over ``X``. A step's frozen
part does not change while the later layers train, so when the model traces with torch.fx its
outputs (the tensors the later layers read) are computed once per step and each minibatch runs
only the later layers on them (bit-identical to running the whole model, and the later steps
become almost free); quantized layers take no gradient.

Example:
    >>> import torch, lowbit
    >>> from lowbit.algorithms.iterative import IterativeConfig
    >>> from lowbit.zoo.models import FmnistMLP
    >>> torch.manual_seed(0) and None
    >>> data = [torch.randn(32, 1, 28, 28) for _ in range(2)]
    >>> cfg = IterativeConfig(granularity="layer", epochs_per_step=1)
    >>> q = lowbit.quantize_(FmnistMLP().eval(), cfg, data=data)
    >>> [s["quantized"] for s in q.lowbit_info["iterative"]["steps"]]
    [['fc1'], ['fc2']]
    >>> q.fc1.input_quant.calibrated, q.fc2.weight.requires_grad
    (True, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..._progress import track
from ...errors import CalibrationError, ConfigError, UnsupportedError
from ...nn import ActQuant, QuantAdd
from ...nn.layers import is_quant_module
from ...nn.quantizers import WeightQuant
from ...transform.graph import trace
from .config import OPTIMIZERS, IterativeConfig

_EVAL_BATCH = 256
_CACHE_BYTES = 1 << 30  # largest frozen-prefix output kept in memory (else the whole model runs every batch)


def _passthrough(x: torch.Tensor) -> torch.Tensor:
    return x


def layer_quantizers(mod: nn.Module) -> list[nn.Module]:
    """The quantizers a quantized module owns: a layer's weight / input / output quantizers, a
    ``QuantAdd``'s three activation quantizers, or a standalone ``ActQuant`` itself."""
    if isinstance(mod, ActQuant):
        return [mod]
    if isinstance(mod, QuantAdd):
        return [mod.input_quant_a, mod.input_quant_b, mod.output_quant]
    if is_quant_module(mod):
        return [q for q in (mod.weight_quant, mod.input_quant, mod.output_quant) if q is not None]
    return []


def all_quantizers(model: nn.Module) -> list[nn.Module]:
    """Every ``WeightQuant`` and ``ActQuant`` of ``model``."""
    return [m for m in model.modules() if isinstance(m, WeightQuant | ActQuant)]


@contextmanager
def quantizers_disabled(target: nn.Module | Iterable[nn.Module]) -> Iterator[list[nn.Module]]:
    """Make quantizers pass-through inside the block: ``target`` is a model (all its ``WeightQuant``
    and ``ActQuant`` modules) or an iterable of quantizers. Each one's ``forward`` is shadowed by the
    identity and restored on exit, also after an exception; quantizer state (qparams, observers)
    is untouched. Nesting is fine: a quantizer already disabled by an outer block is left to it.

    Example:
        >>> import torch, lowbit
        >>> from lowbit.zoo.models import FmnistMLP
        >>> torch.manual_seed(0) and None
        >>> model = FmnistMLP().eval()
        >>> x = torch.randn(8, 1, 28, 28)
        >>> ref = model(x)
        >>> q = lowbit.quantize_(model, lowbit.load_recipe("w4a4"), data=[x])
        >>> with quantizers_disabled(q):
        ...     torch.equal(q(x), ref)
        True
        >>> torch.equal(q(x), ref)
        False
    """
    mods = all_quantizers(target) if isinstance(target, nn.Module) else list(target)
    patched: list[nn.Module] = []
    try:
        for m in mods:
            if "forward" not in m.__dict__:
                m.forward = _passthrough
                patched.append(m)
        yield patched
    finally:
        for m in patched:
            del m.forward


@dataclass
class Step:
    """One step of the schedule: the quantized modules it enables (names), their quantizers, and
    the layers whose weights it owns."""

    names: list[str] = field(default_factory=list)
    quantizers: list[nn.Module] = field(default_factory=list)
    layers: list[nn.Module] = field(default_factory=list)
    closed: bool = False


def _execution_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the quantized modules (layers, residual adds, standalone activation quantizers) in the
    order one forward pass first calls them; modules the pass never reaches come last."""
    owned = {id(q) for m in model.modules() if not isinstance(m, ActQuant) for q in layer_quantizers(m)}
    candidates = {n: m for n, m in model.named_modules() if layer_quantizers(m) and id(m) not in owned}
    order: list[str] = []
    hooks = []

    def hook_for(name: str):
        def hook(mod, args):
            if name not in order:
                order.append(name)

        return hook

    try:
        for n, m in candidates.items():
            hooks.append(m.register_forward_pre_hook(hook_for(n)))
        with torch.no_grad(), quantizers_disabled(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return order + [n for n in candidates if n not in order]


def build_schedule(model: nn.Module, x: torch.Tensor, granularity: str, block_size: int) -> list[Step]:
    """Split the quantized modules of ``model`` into steps (see the module docstring); ``x`` is a
    small batch used to find the execution order."""
    steps: list[Step] = []
    for name in _execution_order(model, x):
        mod = model.get_submodule(name)
        is_layer = is_quant_module(mod)
        if not steps or (is_layer and steps[-1].closed):
            steps.append(Step())
        if is_layer and steps[-1].layers and granularity == "block" and len(steps[-1].layers) >= block_size:
            steps.append(Step())
        step = steps[-1]
        step.names.append(name)
        step.quantizers.extend(layer_quantizers(mod))
        if is_layer:
            step.layers.append(mod)
            if granularity == "layer":
                step.closed = True
        elif isinstance(mod, QuantAdd) and granularity == "block":
            step.closed = True
    return steps


def _as_output(y) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise UnsupportedError(
            f"iterative adaptation matches the model's output to the float model's, so the model must return one float tensor "
            f"(e.g. logits); it returned {type(y).__name__}"
        )
    return y


def _split_graph(model: nn.Module, live: set[str]) -> tuple[fx.GraphModule, fx.GraphModule] | None:
    """``(prefix, suffix)`` graph modules sharing ``model``'s submodules: ``prefix(x)`` returns the values
    the live part reads (a tuple), ``suffix(*values)`` the model's output. A node is *live* when it
    calls a module named in ``live`` (or inside / around one) or reads a live node; every other node
    depends only on the input and on frozen modules. None when the model cannot be traced."""
    if isinstance(model, fx.GraphModule):
        gm = model
    else:
        try:
            gm = trace(model)
        except UnsupportedError:
            return None

    def in_live(target: str) -> bool:
        return any(target == n or target.startswith(n + ".") or n.startswith(target + ".") for n in live)

    live_nodes: set[fx.Node] = set()
    output = None
    for node in gm.graph.nodes:
        if node.op == "output":
            output = node
        elif (node.op in ("call_module", "get_attr") and in_live(node.target)) or any(a in live_nodes for a in node.all_input_nodes):
            live_nodes.add(node)
    frontier = [n for n in gm.graph.nodes if n.op != "output" and n not in live_nodes and any(u in live_nodes or u is output for u in n.users)]
    if output is None or not frontier:
        return None
    prefix_graph, env = fx.Graph(), {}
    for node in gm.graph.nodes:
        if node.op != "output" and node not in live_nodes:
            env[node] = prefix_graph.node_copy(node, env.__getitem__)
    prefix_graph.output(tuple(env[n] for n in frontier))
    suffix_graph, env = fx.Graph(), {}
    for i, node in enumerate(frontier):
        env[node] = suffix_graph.placeholder(f"frozen_{i}")
    for node in gm.graph.nodes:
        if node in live_nodes:
            env[node] = suffix_graph.node_copy(node, env.__getitem__)
    suffix_graph.output(fx.map_arg(output.args[0], env.__getitem__))
    return fx.GraphModule(gm, prefix_graph), fx.GraphModule(gm, suffix_graph)


class _Network:
    """The network on calibration samples ``x[idx]``. When the model traces, the outputs of the frozen
    part (the modules not in ``live`` and what only they feed) are computed once, with the quantizers
    as they are now, and every later call runs only the live part on them: the frozen part no longer
    changes, so this is the same function at a fraction of the cost."""

    def __init__(self, model: nn.Module, x: torch.Tensor, live: set[str] | None = None) -> None:
        self.model, self.x, self.n = model, x, int(x.shape[0])
        self.suffix: fx.GraphModule | None = None
        self.cache: list[torch.Tensor] = []
        split = _split_graph(model, live) if live is not None else None
        if split is None:
            return
        prefix, suffix = split
        starts = range(0, self.n, _EVAL_BATCH)
        with torch.no_grad():
            first = prefix(x[:_EVAL_BATCH])
            rows = min(_EVAL_BATCH, self.n)
            if not all(isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == rows for v in first):
                return  # a frozen value without a batch dimension (e.g. a shape): run the whole model
            if sum(v.numel() * v.element_size() for v in first) * (self.n / rows) > _CACHE_BYTES:
                return
            parts = [first] + [prefix(x[i : i + _EVAL_BATCH]) for i in starts[1:]]
        self.cache = [torch.cat(vs) for vs in zip(*parts, strict=True)]
        self.suffix = suffix

    def __call__(self, idx: torch.Tensor | slice) -> torch.Tensor:
        if self.suffix is None:
            return _as_output(self.model(self.x[idx]))
        return _as_output(self.suffix(*(c[idx] for c in self.cache)))

    def outputs(self) -> torch.Tensor:
        """Outputs on all samples (no gradient)."""
        with torch.no_grad():
            return torch.cat([self(slice(i, i + _EVAL_BATCH)) for i in range(0, self.n, _EVAL_BATCH)])


def _recalibrate(net: _Network, quantizers: list[nn.Module]) -> None:
    """Re-observe the static activation quantizers among ``quantizers`` on the calibration samples and
    freeze their new ranges. During the pass the observing ones are the identity and the other
    ``quantizers`` (weight quantizers, dynamic ones, grid-sharing ones, which copy their source's
    range at the end) are pass-through; quantizers outside ``quantizers`` keep doing what they do."""
    acts = [q for q in quantizers if isinstance(q, ActQuant) and not q.spec.dynamic]
    if not acts:
        return
    observing = {id(q) for q in acts if q.grid_source is None}
    for q in acts:
        q.start_observing()
    try:
        with quantizers_disabled([q for q in quantizers if id(q) not in observing]):
            net.outputs()
    except BaseException:
        for q in acts:
            q.abort_observing()
        raise
    for q in sorted(acts, key=lambda q: q.grid_source is not None):  # sources first
        q.finish_observing()


def _make_optimizer(params: list[nn.Parameter], optimizer: str, lr: float) -> torch.optim.Optimizer:
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.Adam(params, lr=lr)


def _train(net: _Network, layers: list[nn.Module], y: torch.Tensor, config: IterativeConfig | _Schedule, epochs: int, seed: int,
           cosine: bool = False) -> list[float]:
    """``epochs`` passes of minibatch training of ``layers``' own parameters on ``mse(net(x), y)``
    (learning rate ``config.lr`` constant, or decaying along a half cosine); returns the mean loss of each epoch."""
    params = [p for m in layers for p in m.parameters(recurse=False)]
    if not params or epochs == 0:
        return []
    for p in params:
        p.requires_grad_(True)
    opt = _make_optimizer(params, config.optimizer, config.lr)
    total_steps = epochs * -(-net.n // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps) if cosine else None
    g = torch.Generator().manual_seed(seed)
    history = []
    try:
        with torch.enable_grad():
            for _ in range(epochs):
                perm = torch.randperm(net.n, generator=g)
                total = 0.0
                for i in range(0, net.n, config.batch_size):
                    idx = perm[i : i + config.batch_size]
                    loss = F.mse_loss(net(idx), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    total += float(loss.detach()) * idx.numel()
                history.append(total / net.n)
    finally:
        for p in params:
            p.requires_grad_(False)
    return history


@dataclass(frozen=True)
class _Schedule:
    lr: float
    batch_size: int
    optimizer: str = "adam"


def finetune_to_float(model: nn.Module, inputs: Iterable[torch.Tensor], *, epochs: int, lr: float = 1e-4,
                      batch_size: int = 64, optimizer: str = "adam", seed: int = 0) -> dict:
    """Distillation fine-tuning of a quantized model toward its own float outputs, on unlabeled inputs.

    With ``f`` the model with every quantizer pass-through and ``q`` the quantized model
    (straight-through gradients through the fake-quantizers), trains the weights and biases of the
    quantized layers on ``L = mean_x ||q(x) - f(x)||^2 / C`` for ``epochs`` passes, learning rate
    decaying from ``lr`` along a half cosine; activation ranges stay frozen. This is the
    ``final_epochs`` phase of iterative adaptation, usable on its own (ZeroQ's optional
    fine-tuning on distilled inputs uses it).

    Returns ``{"loss": per-epoch mean loss, "mse_before": ..., "mse": ..., "seconds": ...}``.

    Example:
        >>> import torch, lowbit
        >>> from lowbit.zoo.models import FmnistMLP
        >>> torch.manual_seed(0) and None
        >>> x = torch.randn(64, 1, 28, 28)
        >>> q = lowbit.quantize_(FmnistMLP().eval(), lowbit.load_recipe("w4a8"), data=[x])
        >>> r = finetune_to_float(q, [x], epochs=2, lr=1e-5, batch_size=16)
        >>> r["mse"] <= r["mse_before"], len(r["loss"])
        (True, 2)
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive finite number, got {lr!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    layers = [m for m in model.modules() if isinstance(getattr(m, "weight_quant", None), nn.Module)]
    if not layers:
        raise ConfigError("finetune_to_float found no quantized layer (quantize the model first)")
    t0 = time.perf_counter()
    x = torch.cat([t.detach() for t in inputs])
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.train(False)
        for p, _ in flags:
            p.requires_grad_(False)
        net = _Network(model, x)
        with quantizers_disabled(model):
            y = net.outputs()
        before = float(F.mse_loss(net.outputs(), y))
        loss = _train(net, layers, y, _Schedule(float(lr), batch_size, optimizer), epochs, seed, cosine=True)
        after = float(F.mse_loss(net.outputs(), y))
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return {"loss": loss, "mse_before": before, "mse": after, "seconds": time.perf_counter() - t0}


def refine_iterative(model: nn.Module, config: IterativeConfig, inputs: list[torch.Tensor]) -> dict:
    """Refiner of :class:`IterativeConfig` (runs inside ``quantize_`` after calibration).

    Returns ``{"iterative": {...}}``: the schedule (``steps``: modules each step quantized, its
    train loss per epoch), the output MSE against the float network of plain PTQ (``mse_ptq``)
    and of the result (``mse``), and the time taken.
    """
    t0 = time.perf_counter()
    try:
        x = torch.cat([t.detach() for t in inputs])
    except RuntimeError as e:
        raise CalibrationError(f"iterative adaptation stacks the calibration batches into one tensor: {e}") from None
    steps = build_schedule(model, x[:8], config.granularity, config.block_size)
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    info: dict = {"granularity": config.granularity, "samples": int(x.shape[0]), "steps": []}
    try:
        model.train(False)
        for p, _ in flags:
            p.requires_grad_(False)
        whole = _Network(model, x)
        with quantizers_disabled(model):
            y = whole.outputs()
        info["mse_ptq"] = float(F.mse_loss(whole.outputs(), y))
        for k, step in enumerate(track(steps, "iterative adaptation")):
            later = steps[k + 1 :]
            later_quantizers = [q for s in later for q in s.quantizers]
            history: list[float] = []
            if later:
                with quantizers_disabled(later_quantizers):
                    net = _Network(model, x, live={n for s in later for n in s.names})
                    history = _train(net, [m for s in later for m in s.layers], y, config, config.epochs_per_step, config.seed + k)
                if config.recalibrate:
                    _recalibrate(net, later_quantizers)
                del net
            info["steps"].append({"quantized": list(step.names), "trained_layers": sum(len(s.layers) for s in later), "loss": history})
        if config.final_epochs:
            info["final_loss"] = _train(whole, [m for s in steps for m in s.layers], y, config, config.final_epochs, config.seed + len(steps), cosine=True)
        info["mse"] = float(F.mse_loss(whole.outputs(), y))
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    info["seconds"] = time.perf_counter() - t0
    return {"iterative": info}

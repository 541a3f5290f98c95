"""``DynamicQuantModel``: a network whose bit widths are chosen per input sample by a bit controller.

Structure (Liu et al., CVPR 2022)::

    x -> [trunk: first layers, fixed width] -> h -> [rest of the network, dynamic layers] -> logits
                                               |
                                               +-> BitController -> logits_c [B, L, K] -> sel [B, L, K]

* **Trunk**: the first modules of the network (``trunk`` = module names; default: the first conv
  block). Its conv / linear layers run at ``fixed_bits`` (8: first layers are the most sensitive, and
  their output must be known before any width is chosen). The trunk is part of the network and
  runs once; the controller reads its output ``h`` (shared, not duplicated).
* **Dynamic layers**: every conv / linear layer that runs after the trunk, except the last one,
  becomes a :class:`~lowbit.algorithms.dynamic.DynamicQuantConv2d` / ``Linear`` whose width for
  sample ``j`` is ``sel[j, l]``. The last layer (the classifier) stays at ``fixed_bits``.
* **Selection**: training: ``sel = gumbel_softmax(logits_c, tau, hard=True)`` (one-hot forward,
  straight-through gradient, temperature :attr:`DynamicQuantModel.tau`); eval: ``one_hot(argmax)``.

How the split works, and why no graph surgery: the controller is attached with a forward hook on
the trunk's last module for the duration of one forward; the hook computes the selection and hands
each dynamic layer its column before the rest of the network runs. The model's own ``forward``
runs unchanged, so any model whose trunk modules run before all other weight layers works, fx-
traceable or not (``fmnist-resnet``'s ``fc(flatten(pool(...)))`` and ``fmnist-mobilenet``'s residual
blocks included). The split is checked once, on a dry run of the float model
(:meth:`DynamicQuantModel.__init__`): every trunk module must run exactly once, and every conv /
linear layer that finishes before the trunk's last module must belong to the trunk; otherwise a
:class:`~lowbit.errors.ConfigError` says which layer breaks it and how to pass ``trunk=``.

Cost accounting, per sample, measured from the hard choices actually taken::

    BitOPs_j = sum_{fixed layers} MACs * b_f^2 + sum_l MACs_l * b_w(k_jl) * b_a(k_jl) + BitOPs_controller

with ``MACs`` measured by each layer in that forward and the controller counted in float
(``MACs_mlp * 32 * 32``, :class:`~lowbit.algorithms.dynamic.BitController`). The *reference* is the
same network with every dynamic layer at the largest candidate and no controller (the static model
at ``b_K``); budgets (``target_bitops``) are fractions of it. The expected cost under the
controller's probabilities ``p = softmax(logits_c)`` (:meth:`DynamicQuantModel.expected_bitops`)
is what the training regularizer differentiates; it is the exact mean of the hard Gumbel sample's
cost (argmax of ``logits + G`` is distributed as ``p`` whatever ``tau``).

Example:
    >>> import torch
    >>> from lowbit.zoo.models import FmnistResNet
    >>> torch.manual_seed(0) and None
    >>> cfg = DynamicConfig(bits=(2, 4, 8), target_bitops=0.5, hidden=16)
    >>> dyn = prepare(FmnistResNet(width=8).eval(), cfg, [torch.randn(16, 1, 28, 28)])
    >>> dyn.trunk, dyn.classifier, len(dyn.dynamic_layers)
    (('stem',), 'fc', 8)
    >>> logits = dyn.eval()(torch.randn(3, 1, 28, 28))
    >>> dyn.last_bits.shape, bool((dyn.last_bitops <= dyn.max_bitops()).all())
    (torch.Size([3, 8]), True)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...api import collect_inputs
from ...errors import ConfigError, UnsupportedError
from ...nn.layers import is_quant_module
from ...nn.quantizers import ActQuant
from ...transform import FoldBatchNorm
from ...transform.passes import set_submodule
from .config import DynamicConfig
from .controller import BitController
from .layers import DynamicQuantLayer, check_candidate_bits, dynamic_layer

_WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class _DryRun:
    """One float forward with hooks: the order modules start / finish in, call counts, per-layer MACs,
    and the outputs of the requested modules."""

    def __init__(self, model: nn.Module, example: torch.Tensor, keep: Iterable[str] = ()) -> None:
        self.start: dict[str, int] = {}
        self.finish: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.macs: dict[str, int] = {}
        self.outputs: dict[str, Any] = {}
        keep = set(keep)
        tick = [0]
        hooks = []

        def pre(name):
            def hook(mod, inp):
                tick[0] += 1
                self.start.setdefault(name, tick[0])
            return hook

        def post(name):
            def hook(mod, inp, out):
                tick[0] += 1
                self.finish[name] = tick[0]
                self.calls[name] = self.calls.get(name, 0) + 1
                if isinstance(mod, _WEIGHT_LAYERS) and isinstance(out, torch.Tensor):
                    self.macs[name] = int(out[0].numel() * mod.weight[0].numel())
                if name in keep:
                    self.outputs[name] = out
            return hook

        for name, m in model.named_modules():
            if name:
                hooks += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post(name))]
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(example)
        finally:
            for h in hooks:
                h.remove()
            model.train(was)

    def weight_layers(self, model: nn.Module) -> list[str]:
        """Conv2d / Linear layers that ran, in the order they finished."""
        names = [n for n, m in model.named_modules() if isinstance(m, _WEIGHT_LAYERS) and n in self.finish]
        return sorted(names, key=self.finish.__getitem__)


def _default_trunk(model: nn.Module, run: _DryRun, weight_layers: list[str]) -> list[str]:
    """The first conv block: the children (in execution order) up to the first one holding a weight
    layer, plus the weight-free ones that follow it (BN, ReLU, pooling) up to the next weight-holding
    child. A first child holding more than two weight layers (a container of the whole network) is
    descended into."""
    trunk: list[str] = []
    parent, prefix = model, ""
    while True:
        kids = [(f"{prefix}{n}", m) for n, m in parent.named_children() if f"{prefix}{n}" in run.start]
        kids.sort(key=lambda nm: run.start[nm[0]])
        holds = [[w for w in weight_layers if _under(w, n)] for n, _ in kids]
        first = next((i for i, h in enumerate(holds) if h), None)
        if first is None:
            raise ConfigError(f"no default trunk: {type(model).__name__} has no conv / linear layer under {prefix or 'the root'}; "
                              "pass trunk=[module names]")
        name, mod = kids[first]
        if len(holds[first]) > 2 and any(True for _ in mod.children()):
            trunk += [n for n, _ in kids[:first]]
            parent, prefix = mod, name + "."
            continue
        trunk += [n for n, _ in kids[: first + 1]]
        for (n, _), h in zip(kids[first + 1 :], holds[first + 1 :], strict=True):
            if h or run.calls.get(n, 0) != 1:
                break
            trunk.append(n)
        return trunk


def _trunk_help(model: nn.Module) -> str:
    kids = [n for n, _ in model.named_children()]
    return (f"trunk= takes module names of the model, in execution order, ending where the controller should read the features "
            f"(top-level modules: {kids}; nested ones by dotted name, e.g. '{kids[-1] if kids else 'layers'}.0')")


class DynamicQuantModel(nn.Module):
    """A model with per-sample bit widths chosen by a :class:`BitController` (module docstring).

    Built on a copy of ``model`` (the caller's model is not changed). Its BatchNorm layers should
    already be folded (:func:`prepare` does that, then calibrates); the layers' input grids are
    uncalibrated until :meth:`calibrate`.

    Args:
        model: the float network (``nn.Module`` taking one input tensor).
        example: an input batch (one sample is enough) for the dry run that checks the split and
            measures the layers.
        bits: candidate widths of the dynamic layers, increasing, in 1..16.
        trunk: module names of the trunk (default: the first conv block, see the module docstring).
        hidden: the controller MLP's hidden width (0: one static choice for every input).
        grid: the controller pools the trunk features over a ``grid x grid`` split (1: global average).
        fixed_bits: width of the trunk's layers and of the classifier.
        observer: observer that initializes every candidate's steps (``mse``, ``minmax``, ...).

    Attributes:
        model: the network with its conv / linear layers replaced by dynamic layers.
        controller: the :class:`BitController`.
        trunk, cut: the trunk's module names and the one whose output feeds the controller.
        input_shape: the shape of one input sample (of ``example``).
        dynamic_layers, fixed_layers, classifier: layer names (dynamic ones in execution order).
        tau: Gumbel-softmax temperature used in training mode.
        detach_trunk: the controller's gradient stops at the trunk's output (default True: the
            trunk's features serve the classifier first; the budget regularizer must not bend them).
        last_logits, last_probs: controller output ``[B, L, K]`` of the last forward (``last_probs``
            keeps its gradient in training mode, for :meth:`expected_bitops`).
        last_choice, last_bits: chosen candidate index / width ``[B, L]`` of the last forward.
        last_bitops: measured BitOPs per sample ``[B]`` (int64) of the last forward.

    Raises:
        ConfigError: bad candidates, unknown trunk names, a trunk that cannot be split off.
        UnsupportedError: an already quantized model, a weight layer type dynamic layers do not
            cover (Conv1d / Conv3d / transposed convs), a weight layer that runs twice per forward.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, *, bits: Sequence[int] = (2, 3, 4, 5, 6),
                 trunk: Sequence[str] | None = None, hidden: int = 64, fixed_bits: int = 8, observer: str = "mse",
                 grid: int = 1) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.bits = check_candidate_bits(bits)
        self.fixed_bits = check_candidate_bits([fixed_bits], "fixed_bits", lowest=2)[0]
        if not isinstance(example, torch.Tensor) or example.ndim < 1 or example.shape[0] < 1:
            raise ConfigError("example must be an input batch tensor with at least one sample")
        if any(is_quant_module(m) or isinstance(m, ActQuant | DynamicQuantLayer) for m in model.modules()):
            raise UnsupportedError("this model is already quantized; build a dynamic model from the float model "
                                   "(its float weights are the starting point; each candidate's steps are calibrated anew)")
        model = copy.deepcopy(model)
        run = _DryRun(model, example[:1])
        layers = run.weight_layers(model)
        other = [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, nn.Conv2d)
                 and n in run.finish]
        if other:
            raise UnsupportedError(f"dynamic quantization covers nn.Conv2d and nn.Linear layers; {other[0]!r} is a "
                                   f"{type(model.get_submodule(other[0])).__name__}")
        shared = [n for n in layers if run.calls[n] > 1]
        if shared:
            raise UnsupportedError(f"layer {shared[0]!r} runs {run.calls[shared[0]]} times per forward; a dynamic layer "
                                   "needs one width per sample, so shared layers are not supported")
        default = trunk is None
        trunk = _default_trunk(model, run, layers) if default else self._check_trunk_names(model, trunk)
        try:
            cut, trunk_layers, rest = self._split(model, run, layers, trunk)
        except ConfigError as e:
            if default:
                raise ConfigError(f"the default trunk {trunk} cannot serve as the controller's trunk: {e}") from None
            raise
        run = _DryRun(model, example[:1], keep=[cut])
        h = run.outputs.get(cut)
        if not isinstance(h, torch.Tensor) or h.ndim < 2:
            shape = list(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ConfigError(f"the trunk's last module {cut!r} outputs {shape}; the controller needs a [batch, channels, ...] "
                              f"tensor. {_trunk_help(model)}")
        self.input_shape = tuple(int(d) for d in example.shape[1:])  # one sample's shape: what a saved model is rebuilt with
        self.trunk, self.cut = tuple(trunk), cut
        self.classifier = rest[-1]
        self.dynamic_layers = tuple(rest[:-1])
        self.fixed_layers = tuple(trunk_layers) + (self.classifier,)
        for name in layers:
            mod = model.get_submodule(name)
            new = dynamic_layer(mod, self.bits if name in self.dynamic_layers else (self.fixed_bits,), observer=observer)
            new.macs = run.macs[name]
            set_submodule(model, name, new)
        self.model = model
        self.controller = BitController(int(h.shape[1]), len(self.dynamic_layers), len(self.bits), hidden, grid)
        self.controller.pool(h)  # a grid the trunk's output cannot be split into fails here, with the fix
        self.tau = 1.0
        self.detach_trunk = True
        self.last_logits = self.last_probs = self.last_sel = self.last_choice = self.last_bits = self.last_bitops = None
        self.noise = 1.0

    # -- construction helpers ----------------------------------------------------------------
    @staticmethod
    def _check_trunk_names(model: nn.Module, trunk: Sequence[str]) -> list[str]:
        if isinstance(trunk, str) or not isinstance(trunk, Sequence) or not trunk or not all(isinstance(t, str) and t for t in trunk):
            raise ConfigError(f"trunk must be a non-empty list of module names, got {trunk!r}. {_trunk_help(model)}")
        names = dict(model.named_modules())
        unknown = [t for t in trunk if t not in names]
        if unknown:
            raise ConfigError(f"unknown trunk module {unknown[0]!r} in {list(trunk)}. {_trunk_help(model)}")
        return list(trunk)

    @staticmethod
    def _split(model: nn.Module, run: _DryRun, layers: list[str], trunk: list[str]) -> tuple[str, list[str], list[str]]:
        for t in trunk:
            if run.calls.get(t, 0) != 1:
                raise ConfigError(f"trunk module {t!r} runs {run.calls.get(t, 0)} times per forward; a trunk module must run "
                                  f"exactly once. {_trunk_help(model)}")
        cut = max(trunk, key=run.finish.__getitem__)
        trunk_layers = [n for n in layers if any(_under(n, t) for t in trunk)]
        early = [n for n in layers if run.finish[n] < run.finish[cut] and n not in trunk_layers]
        if early:
            raise ConfigError(f"layer {early[0]!r} runs before the trunk's end ({cut!r}) but is not in the trunk: the trunk must be "
                              f"a prefix of the network (its widths are chosen from the trunk's output). Add it (or its block) "
                              f"to trunk=. {_trunk_help(model)}")
        if not trunk_layers:
            raise ConfigError(f"the trunk {trunk} holds no conv / linear layer; the controller would read the raw input. "
                              f"{_trunk_help(model)}")
        rest = [n for n in layers if n not in trunk_layers]
        if len(rest) < 2:
            raise ConfigError(f"only {len(rest)} conv / linear layer(s) run after the trunk {trunk}; a dynamic model needs at least "
                              f"one dynamic layer before the classifier: choose a shorter trunk. {_trunk_help(model)}")
        return cut, trunk_layers, rest

    def train(self, mode: bool = True) -> DynamicQuantModel:
        """Training / eval mode; BatchNorm layers that could not be folded (a model torch.fx cannot
        trace) stay in eval mode: their running statistics are frozen, as in fine-tuning."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def _layer(self, name: str) -> DynamicQuantLayer:
        return self.model.get_submodule(name)

    # -- calibration -------------------------------------------------------------------------
    def calibrate(self, data: Any, *, max_samples: int | None = None) -> int:
        """Initialize every candidate's input step (and the controller's feature standardization)
        from ``data``, running the network in float. Returns the samples seen.

        Raises:
            CalibrationError: no data, empty data or NaN/Inf inputs.
        """
        inputs = collect_inputs(data, max_samples=max_samples)
        layers = [m for m in self.model.modules() if isinstance(m, DynamicQuantLayer)]
        pooled: list[torch.Tensor] = []
        hook = self.model.get_submodule(self.cut).register_forward_hook(lambda m, i, o: pooled.append(self.controller.pool(o.detach())))
        for layer in layers:
            layer.start_observing()
        seen = 0
        try:
            with torch.no_grad():
                for x in inputs:
                    self.model(x)
                    seen += x.shape[0]
            for layer in layers:
                layer.finish_observing()
        finally:
            hook.remove()
            for layer in layers:
                layer.abort_observing()
        self.controller.set_feature_stats(torch.cat(pooled))
        return seen

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x``; records the per-sample choices and BitOPs (``last_*`` attributes)."""
        dyn = [self._layer(n) for n in self.dynamic_layers]
        state: dict[str, torch.Tensor] = {}

        def hook(mod, inp, out):
            if "sel" in state:
                raise UnsupportedError(f"the trunk's last module {self.cut!r} ran twice in one forward")
            logits = self.controller(out.detach() if self.detach_trunk else out)
            if self.training:  # straight-through Gumbel sample, the noise scaled by self.noise (1: F.gumbel_softmax)
                g = -torch.empty_like(logits).exponential_().log()
                soft = ((logits + self.noise * g) / self.tau).softmax(-1)
                sel = F.one_hot(soft.argmax(-1), len(self.bits)).to(soft.dtype) - soft.detach() + soft
            else:
                sel = F.one_hot(logits.argmax(-1), len(self.bits)).to(logits.dtype)
            for i, layer in enumerate(dyn):
                layer.selection = sel[:, i]
            state["logits"], state["sel"] = logits, sel

        handle = self.model.get_submodule(self.cut).register_forward_hook(hook)
        try:
            out = self.model(x)
        finally:
            handle.remove()
            for layer in dyn:
                layer.selection = None
        if "sel" not in state:
            raise UnsupportedError(f"the trunk's last module {self.cut!r} did not run in this forward")
        logits = state["logits"]
        self.last_logits = logits.detach()
        probs = torch.softmax(logits, -1)
        # the graph is kept only while it can serve a loss (training with autograd on); a stored non-leaf
        # tensor would also make the model impossible to deepcopy
        keep = self.training and torch.is_grad_enabled()
        self.last_probs = probs if keep else probs.detach()
        self.last_sel = state["sel"] if keep else state["sel"].detach()
        self.last_choice = state["sel"].detach().argmax(-1)
        self.last_bits = torch.tensor(self.bits, device=logits.device)[self.last_choice]
        table = self.cost_table(device=logits.device)
        rows = torch.arange(len(self.dynamic_layers), device=logits.device)
        self.last_bitops = table[rows, self.last_choice].sum(1) + (self.fixed_bitops() + self.controller.bitops())
        return out

    # -- costs -------------------------------------------------------------------------------
    def layer_macs(self) -> dict[str, int]:
        """MACs per sample of every quantized layer (fixed and dynamic), from its last forward."""
        return {n: self._layer(n).macs for n in (*self.fixed_layers, *self.dynamic_layers)}

    def cost_table(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``[L, K]`` int64: BitOPs of dynamic layer ``l`` at candidate ``k``, ``MACs_l * b_w,k * b_a,k``."""
        rows = [[c["bitops"] for c in self._layer(n).candidate_costs()] for n in self.dynamic_layers]
        return torch.tensor(rows, dtype=torch.int64, device=device)

    def fixed_bitops(self) -> int:
        """BitOPs per sample of the fixed-width layers (trunk and classifier)."""
        return sum(self._layer(n).candidate_costs()[0]["bitops"] for n in self.fixed_layers)

    def controller_bitops(self) -> int:
        """BitOPs per sample of the controller (its MLP in float)."""
        return self.controller.bitops()

    def reference_bitops(self) -> int:
        """BitOPs per sample of the static model at the largest candidate, without controller: the
        unit of ``target_bitops``."""
        return self.fixed_bitops() + int(self.cost_table()[:, -1].sum())

    def min_bitops(self) -> int:
        """BitOPs per sample with every dynamic layer at the smallest candidate, controller included."""
        return self.fixed_bitops() + self.controller_bitops() + int(self.cost_table()[:, 0].sum())

    def max_bitops(self) -> int:
        """BitOPs per sample with every dynamic layer at the largest candidate, controller included."""
        return self.fixed_bitops() + self.controller_bitops() + int(self.cost_table()[:, -1].sum())

    def bitops_range(self) -> tuple[float, float]:
        """``(min, max)`` reachable average BitOPs as fractions of :meth:`reference_bitops`."""
        ref = self.reference_bitops()
        return self.min_bitops() / ref, self.max_bitops() / ref

    def expected_bitops(self, probs: torch.Tensor | None = None, *, normalized: bool = False) -> torch.Tensor:
        """``E_j[BitOPs] = fixed + controller + sum_l sum_k p_jlk MACs_l b_w,k b_a,k`` per sample ``[B]``,
        differentiable in ``p`` (default: :attr:`last_probs`); ``normalized`` divides by :meth:`reference_bitops`."""
        p = self.last_probs if probs is None else probs
        if p is None:
            raise UnsupportedError("no controller probabilities yet: run a forward first (or pass probs=)")
        ref = float(self.reference_bitops())
        scale = 1.0 / ref if normalized else 1.0
        table = self.cost_table(device=p.device).to(p.dtype if p.is_floating_point() else torch.float32) * scale
        const = (self.fixed_bitops() + self.controller_bitops()) * scale
        return (p * table).sum((1, 2)) + const

    def sampled_bitops(self, *, normalized: bool = False) -> torch.Tensor:
        """BitOPs of the choices taken in the last forward, per sample ``[B]``: the value of
        :attr:`last_bitops`, differentiable through the straight-through selection (training), so a
        budget on it constrains what the model actually runs, whatever the Gumbel noise."""
        if self.last_sel is None:
            raise UnsupportedError("no selection yet: run a forward first")
        return self.expected_bitops(self.last_sel, normalized=normalized)

    def summary(self) -> dict:
        """Structure and costs: trunk, cut, layers, candidates, BitOPs reference / range / controller."""
        lo, hi = self.bitops_range()
        ref = self.reference_bitops()
        return {"bits": list(self.bits), "fixed_bits": self.fixed_bits, "trunk": list(self.trunk), "cut": self.cut,
                "dynamic_layers": list(self.dynamic_layers), "fixed_layers": list(self.fixed_layers), "classifier": self.classifier,
                "reference_bitops": ref, "fixed_bitops": self.fixed_bitops(), "controller_bitops": self.controller_bitops(),
                "controller_macs": self.controller.macs(), "bitops_range": [lo, hi],
                "controller_share_of_reference": self.controller_bitops() / ref}


def prepare(model: nn.Module, config: DynamicConfig, calib_data: Any) -> DynamicQuantModel:
    """Build a calibrated :class:`DynamicQuantModel` from a float model (the model is not changed).

    Steps: copy ``model``; fold BatchNorm (:class:`lowbit.transform.FoldBatchNorm`); split off the
    trunk and swap the conv / linear layers (:class:`DynamicQuantModel`); initialize every
    candidate's steps from lowbit's observers on at most ``config.calib_size`` samples of
    ``calib_data`` (any iterable of batches, ``(x, y)`` tuples or a lowbit dataset); build the
    controller. Then checks that ``config.target_bitops`` is reachable on this model. BatchNorm
    layers of a model torch.fx cannot trace stay unfolded (with a warning), frozen in eval mode, and
    are listed in ``dyn.lowbit_info["bn_frozen"]``.

    Raises:
        ConfigError: ``config`` is not a :class:`DynamicConfig`; the trunk cannot be split off; the
            target lies outside the reachable range ``[min, max]`` (fractions of the static model at
            the largest candidate; the fixed trunk / classifier and the controller raise ``min``).
        CalibrationError: no / empty / non-finite calibration data.
    """
    if not isinstance(config, DynamicConfig):
        raise ConfigError(f"prepare needs a DynamicConfig, got {type(config).__name__}")
    inputs = collect_inputs(calib_data, max_samples=config.calib_size)
    float_model = copy.deepcopy(model).eval()
    folded = FoldBatchNorm()
    float_model = folded.apply(float_model)  # warns and folds nothing when torch.fx cannot trace the model
    dyn = DynamicQuantModel(float_model, inputs[0][:1], bits=config.bits, trunk=config.trunk, hidden=config.hidden, grid=config.grid,
                            fixed_bits=config.fixed_bits, observer=config.observer)
    dyn.calibrate(inputs)
    dyn.tau = config.tau[0]
    check_target(dyn, config.target_bitops)
    unfolded = [n for n, m in dyn.model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    dyn.lowbit_info = {**dyn.summary(), "bn_folded": [list(p) for p in folded.folded], "bn_frozen": unfolded,
                       "calibration_samples": sum(x.shape[0] for x in inputs), "config": config.to_dict()}
    return dyn.eval()


def check_target(dyn: DynamicQuantModel, target: float) -> None:
    """Raise ConfigError unless ``target`` (fraction of the reference BitOPs) is within :meth:`~DynamicQuantModel.bitops_range`:
    ``min_l b_1 .. max_l b_K`` costs, fixed layers and controller included, over the static ``b_K`` model."""
    lo, hi = dyn.bitops_range()
    if not (isinstance(target, int | float) and math.isfinite(target) and lo <= target <= hi):
        raise ConfigError(f"target_bitops={target!r} is outside what the candidates {list(dyn.bits)} can reach on this model: "
                          f"[{lo:.4f}, {hi:.4f}] of the static {dyn.bits[-1]}-bit model (smallest candidate everywhere .. largest "
                          f"everywhere; the fixed {dyn.fixed_bits}-bit trunk / classifier and the controller count too). "
                          "Pick a target inside it, or add smaller candidates.")

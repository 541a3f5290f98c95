"""torch.fx helpers: a tracer that keeps quantized layers as leaves, and graph passes
where topology matters (BatchNorm folding partners, functional residual adds)."""

from __future__ import annotations

import operator
import warnings

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..config import QuantSpec
from ..errors import UnsupportedError
from ..nn import QuantAdd
from ..nn.layers import is_quant_module
from ..nn.quantizers import ActQuant

ADD_TARGETS = (operator.add, operator.iadd, torch.add)
POOL_FUNCTIONS = (F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d)


class LeafTracer(fx.Tracer):
    """Treats torch.nn layers, lowbit quant layers and quantizers as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_quant_module(m) or isinstance(m, ActQuant | QuantAdd) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; raises UnsupportedError with the reason when it cannot."""
    try:
        graph = LeafTracer().trace(model)
    except Exception as e:  # fx raises many error types for untraceable code
        raise UnsupportedError(f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {e}") from None
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def try_trace(model: nn.Module, purpose: str) -> fx.GraphModule | None:
    """Trace or warn (naming what is skipped) and return None."""
    try:
        return trace(model)
    except UnsupportedError as e:
        warnings.warn(f"{e}; {purpose} is skipped for this model", stacklevel=3)
        return None


def conv_bn_pairs(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` where a Conv/Linear's only user is a BatchNorm of matching size."""
    mods = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv = mods.get(src.target)
        bn = mods[node.target]
        if isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Linear) and bn.track_running_stats and bn.running_mean is not None:
            if conv.weight.shape[0] == bn.num_features:
                pairs.append((src.target, node.target))
    return pairs


def _is_avg_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.AvgPool1d | nn.AvgPool2d | nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d)
    return node.op == "call_function" and node.target in POOL_FUNCTIONS


def quantize_functional_ops(model: nn.Module, spec: QuantSpec) -> tuple[nn.Module, dict[str, list[str]]]:
    """Make residual adds and average pooling quantizable the way integer runtimes execute them.

    * tensor ``a + b`` (``operator.add`` / ``iadd``, ``torch.add``) becomes a :class:`QuantAdd`
      (both operands and the sum on int8 grids — ONNX Runtime's ``QLinearAdd``);
    * average pooling (modules or ``F.avg_pool*`` / ``F.adaptive_avg_pool*``) gets an activation
      quantizer on its input and its output (``QLinearAveragePool`` / ``QLinearGlobalAveragePool``),
      which also lets the producing conv emit int8 directly.

    Returns ``(model, {"adds": [...], "pools": [...]})``. The model is a ``GraphModule`` sharing
    every submodule with ``model`` when something was captured, else ``model`` itself; an
    untraceable model is returned unchanged with a warning.
    """
    found: dict[str, list[str]] = {"adds": [], "pools": []}
    gm = try_trace(model, "quantization of functional residual adds and pooling")
    if gm is None:
        return model, found
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in ADD_TARGETS:
            if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
                continue
            name = f"lowbit_add_{len(found['adds'])}"
            gm.add_submodule(name, QuantAdd(spec))
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(name, args=node.args)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            found["adds"].append(name)
        elif _is_avg_pool(gm, node) and node.args and isinstance(node.args[0], fx.Node):
            k = len(found["pools"])
            qin, qout = f"lowbit_pool_{k}_in", f"lowbit_pool_{k}_out"
            gm.add_submodule(qin, ActQuant(spec))
            gm.add_submodule(qout, ActQuant(spec))
            with gm.graph.inserting_before(node):
                q_in = gm.graph.call_module(qin, args=(node.args[0],))
            node.args = (q_in, *node.args[1:])
            with gm.graph.inserting_after(node):
                q_out = gm.graph.call_module(qout, args=(node,))
            node.replace_all_uses_with(q_out, delete_user_cb=lambda user, q_out=q_out: user is not q_out)
            found["pools"].append(str(node.target) if node.op == "call_module" else node.name)
    if not found["adds"] and not found["pools"]:  # nothing captured: keep the user's own module object
        return model, found
    found["fused_relu"] = fuse_add_relu(gm)
    found["shared_grids"] = share_quant_grids(gm)
    gm.graph.lint()
    gm.recompile()
    return gm, found


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    return (node.op == "call_function" and node.target in (F.relu, torch.relu)) or (node.op == "call_method" and node.target == "relu")


def fuse_add_relu(gm: fx.GraphModule) -> list[str]:
    """``QuantAdd`` whose only user is a ReLU quantizes ``relu(a + b)`` (``fused_relu``): its output grid
    then starts at zero, the ReLU after it is the identity, and runtimes run add + ReLU as one kernel."""
    fused = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), QuantAdd) and len(node.users) == 1:
            (user,) = node.users
            if _is_relu(gm, user):
                gm.get_submodule(node.target).fused_relu = True
                fused.append(node.target)
    return fused


_GRID_PRESERVING_MODULES = (nn.Identity, nn.Dropout, nn.Flatten, nn.MaxPool1d, nn.MaxPool2d)
_GRID_PRESERVING_FUNCTIONS = (torch.flatten, torch.reshape, F.max_pool1d, F.max_pool2d)
_GRID_PRESERVING_METHODS = ("flatten", "view", "reshape", "contiguous")


def share_quant_grids(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """Let activation quantizers whose input is already on another quantizer's grid reuse that grid.

    A *grid* is the output of an activation quantizer (a standalone ``ActQuant``, a ``QuantAdd``'s
    output, a layer's ``output_quant``), carried unchanged through reshapes, max pooling, dropout and
    the ReLU after a ``fused_relu`` add. A consumer quantizer (a layer's ``input_quant``, an
    ``ActQuant``, a ``QuantAdd`` input) of the same format on such a value calls
    :meth:`ActQuant.share_grid_with`: ``fq(fq(x, S), S) = fq(x, S)``, so the simulation is unchanged
    while the deployed graph loses a requantization. Returns ``(consumer, source)`` names.
    """
    names = {id(m): n for n, m in gm.named_modules()}
    grid: dict[fx.Node, ActQuant] = {}
    links = []

    def link(consumer: ActQuant | None, source: ActQuant) -> None:
        if consumer is None or consumer is source or consumer.spec.dynamic or source.spec.dynamic:
            return
        if consumer.spec.format != source.spec.format or consumer.spec.granularity != source.spec.granularity:
            return
        root = source.grid_source or source
        consumer.share_grid_with(root)
        links.append((names.get(id(consumer), "?"), names.get(id(root), "?")))

    for node in gm.graph.nodes:
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, ActQuant):
                if src in grid:
                    link(mod, grid[src])
                grid[node] = mod.grid_source or mod
            elif isinstance(mod, QuantAdd):
                for arg, q in zip(node.args, (mod.input_quant_a, mod.input_quant_b), strict=False):
                    if isinstance(arg, fx.Node) and arg in grid:
                        link(q, grid[arg])
                grid[node] = mod.output_quant
            elif is_quant_module(mod):
                if src in grid:
                    link(mod.input_quant, grid[src])
                if mod.output_quant is not None:
                    grid[node] = mod.output_quant
            elif src in grid and isinstance(mod, _GRID_PRESERVING_MODULES):
                grid[node] = grid[src]
            elif src in grid and isinstance(mod, nn.ReLU) and src.op == "call_module" and getattr(gm.get_submodule(src.target), "fused_relu", False):
                grid[node] = grid[src]
        elif src in grid and node.op == "call_function":
            if node.target in _GRID_PRESERVING_FUNCTIONS:
                grid[node] = grid[src]
            elif node.target in (F.relu, torch.relu) and src.op == "call_module" and getattr(gm.get_submodule(src.target), "fused_relu", False):
                grid[node] = grid[src]
        elif src in grid and node.op == "call_method" and node.target in _GRID_PRESERVING_METHODS:
            grid[node] = grid[src]
    return links


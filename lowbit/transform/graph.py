"""torch.fx helpers: a tracer that keeps quantized layers as leaves, and graph passes
where topology matters (BatchNorm folding partners, functional residual adds)."""

from __future__ import annotations

import operator
import warnings

import torch
import torch.fx as fx
from torch import nn

from ..config import QuantSpec
from ..errors import UnsupportedError
from ..nn import QuantAdd
from ..nn.layers import is_quant_module
from ..nn.quantizers import ActQuant

ADD_TARGETS = (operator.add, operator.iadd, torch.add)


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


def quantize_functional_adds(model: nn.Module, spec: QuantSpec) -> tuple[nn.Module, list[str]]:
    """Replace tensor ``a + b`` nodes (``operator.add``/``iadd``, ``torch.add``) by :class:`QuantAdd` modules.

    Returns ``(graph_module, names_of_added_modules)``; the GraphModule shares every submodule
    with ``model``. If there is no such add, returns ``(model, [])``; if the model cannot be
    traced, the same with a warning.
    """
    gm = try_trace(model, "quantization of functional residual adds")
    if gm is None:
        return model, []
    names = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in ADD_TARGETS:
            continue
        if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
            continue
        name = f"lowbit_add_{len(names)}"
        gm.add_submodule(name, QuantAdd(spec))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, args=node.args)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        names.append(name)
    if not names:  # nothing to capture: keep the user's own module object
        return model, []
    gm.graph.lint()
    gm.recompile()
    return gm, names

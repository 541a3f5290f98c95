"""Model transformations: selectors, module swap, BatchNorm folding, fx graph passes."""

from .graph import quantize_functional_adds as quantize_functional_adds, trace as trace
from .passes import FoldBatchNorm as FoldBatchNorm, fold_bn_into as fold_bn_into, set_submodule as set_submodule
from .selectors import quantizable_layers as quantizable_layers, resolve as resolve

"""Model transformations: selectors, module swap, BatchNorm folding, fx graph passes."""

from .graph import quantize_functional_ops as quantize_functional_ops
from .graph import trace as trace
from .passes import FoldBatchNorm as FoldBatchNorm
from .passes import fold_bn_into as fold_bn_into
from .passes import set_submodule as set_submodule
from .selectors import quantizable_layers as quantizable_layers
from .selectors import resolve as resolve
from .selectors import select_layers as select_layers

"""Quantized / fake-quant modules."""

from .layers import (
    QUANT_MODULES as QUANT_MODULES,
    QuantAdd as QuantAdd,
    QuantConv1d as QuantConv1d,
    QuantConv2d as QuantConv2d,
    QuantLinear as QuantLinear,
    is_quant_module as is_quant_module,
)
from .quantizers import ActQuant as ActQuant, WeightQuant as WeightQuant

"""Quantized / fake-quant modules."""

from .layers import (
    QUANT_MODULES as QUANT_MODULES,
)
from .layers import (
    QuantAdd as QuantAdd,
)
from .layers import (
    QuantConv1d as QuantConv1d,
)
from .layers import (
    QuantConv2d as QuantConv2d,
)
from .layers import (
    QuantEmbedding as QuantEmbedding,
)
from .layers import (
    QuantLinear as QuantLinear,
)
from .layers import (
    is_quant_module as is_quant_module,
)
from .quantizers import ActQuant as ActQuant
from .quantizers import WeightQuant as WeightQuant

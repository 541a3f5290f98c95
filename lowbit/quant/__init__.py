"""Pure quantization math: formats, granularity, rounding, qparams, (de)quantize, fake-quantize."""

from .affine import (
    choose_qparams as choose_qparams,
    choose_qparams_dynamic as choose_qparams_dynamic,
    dequantize as dequantize,
    fake_quantize as fake_quantize,
    quantize as quantize,
    range_of as range_of,
)
from .formats import Affine as Affine, IntFormat as IntFormat, Symmetric as Symmetric, mapping_from_name as mapping_from_name
from .granularity import PerChannel as PerChannel, PerGroup as PerGroup, PerTensor as PerTensor
from .rounding import ROUNDING_MODES as ROUNDING_MODES, round_values as round_values

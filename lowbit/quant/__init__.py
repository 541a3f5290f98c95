"""Pure quantization math: formats, granularity, rounding, qparams, (de)quantize, fake-quantize."""

from .affine import (
    choose_qparams as choose_qparams,
)
from .affine import (
    choose_qparams_dynamic as choose_qparams_dynamic,
)
from .affine import (
    dequantize as dequantize,
)
from .affine import (
    fake_quantize as fake_quantize,
)
from .affine import (
    quantize as quantize,
)
from .affine import (
    range_of as range_of,
)
from .formats import Affine as Affine
from .formats import IntFormat as IntFormat
from .formats import Symmetric as Symmetric
from .formats import mapping_from_name as mapping_from_name
from .granularity import PerChannel as PerChannel
from .granularity import PerGroup as PerGroup
from .granularity import PerTensor as PerTensor
from .rounding import ROUNDING_MODES as ROUNDING_MODES
from .rounding import round_values as round_values

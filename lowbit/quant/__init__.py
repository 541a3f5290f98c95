"""Pure quantization math: formats, granularity, rounding, qparams, (de)quantize, fake-quantize,
binary / ternary and non-uniform (power-of-two, ShiftCNN, k-means codebook) weights."""

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
from .binary import binarize_weight as binarize_weight
from .binary import binary_scale as binary_scale
from .binary import sign_ste as sign_ste
from .binary import ternarize_weight as ternarize_weight
from .binary import ternary_scale as ternary_scale
from .binary import ttq_quantize as ttq_quantize
from .binary import twn_threshold as twn_threshold
from .binary import xnor_activation_scale as xnor_activation_scale
from .formats import Affine as Affine
from .formats import IntFormat as IntFormat
from .formats import Symmetric as Symmetric
from .formats import mapping_from_name as mapping_from_name
from .granularity import PerChannel as PerChannel
from .granularity import PerGroup as PerGroup
from .granularity import PerTensor as PerTensor
from .granularity import PerToken as PerToken
from .nonuniform import codebook_indices as codebook_indices
from .nonuniform import codebook_quantize as codebook_quantize
from .nonuniform import kmeans_codebook as kmeans_codebook
from .nonuniform import lloyd_1d as lloyd_1d
from .nonuniform import pot_levels as pot_levels
from .nonuniform import pot_quantize as pot_quantize
from .nonuniform import pot_scale as pot_scale
from .nonuniform import shiftcnn_codes as shiftcnn_codes
from .nonuniform import shiftcnn_quantize as shiftcnn_quantize
from .rounding import ROUNDING_MODES as ROUNDING_MODES
from .rounding import round_values as round_values

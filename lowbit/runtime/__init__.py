"""Runtimes: ONNX Runtime and OpenVINO (exported models), lowbit's integer-only reference engine, XNOR-popcount binary kernels."""

from .bitwise import to_bitwise as to_bitwise
from .cpu import CpuFeatures as CpuFeatures
from .cpu import cpu_features as cpu_features
from .cpu import fit_to_cpu as fit_to_cpu
from .cpu import int8_plan as int8_plan
from .integer import IntegerEngine as IntegerEngine
from .integer import IntegerProgram as IntegerProgram
from .integer import integer_exact as integer_exact
from .openvino import OpenVINOModel as OpenVINOModel
from .openvino import openvino_available as openvino_available
from .ort import OrtModel as OrtModel
from .ort import ort_available as ort_available
from .xnor import binary_conv2d as binary_conv2d
from .xnor import binary_linear as binary_linear
from .xnor import pack_conv_weight as pack_conv_weight
from .xnor import pack_signs as pack_signs
from .xnor import unpack_signs as unpack_signs
from .xnor import xnor_backend as xnor_backend
from .xnor import xnor_matmul as xnor_matmul

"""Runtimes: ONNX Runtime and OpenVINO (exported models), and lowbit's integer-only reference engine."""

from .cpu import CpuFeatures as CpuFeatures
from .cpu import cpu_features as cpu_features
from .cpu import int8_plan as int8_plan
from .integer import IntegerEngine as IntegerEngine
from .integer import IntegerProgram as IntegerProgram
from .integer import integer_exact as integer_exact
from .openvino import OpenVINOModel as OpenVINOModel
from .openvino import openvino_available as openvino_available
from .ort import OrtModel as OrtModel
from .ort import ort_available as ort_available

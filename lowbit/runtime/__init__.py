"""Runtimes that execute exported models: ONNX Runtime (int8 QDQ and float)."""

from .cpu import CpuFeatures as CpuFeatures
from .cpu import cpu_features as cpu_features
from .cpu import int8_plan as int8_plan
from .openvino import OpenVINOModel as OpenVINOModel
from .openvino import openvino_available as openvino_available
from .ort import OrtModel as OrtModel
from .ort import ort_available as ort_available

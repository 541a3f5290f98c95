"""Runtimes that execute exported models: ONNX Runtime (int8 QDQ and float)."""

from .ort import OrtModel as OrtModel
from .ort import ort_available as ort_available

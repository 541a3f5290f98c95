"""OpenVINO execution of an exported ONNX model behind a torch-like callable.

OpenVINO reads the QDQ ONNX file directly and runs QuantizeLinear/DequantizeLinear groups through
its low-precision int8 pipeline. Optional backend: ``pip install 'lowbit[openvino]'``.

Example (the same file :class:`lowbit.runtime.OrtModel` takes; exercised in tests/export/test_onnx.py):
    >>> openvino_available()  # the [openvino] extra, installed by `make`
    True
    >>> OpenVINOModel("model_int8.onnx")(images)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UnsupportedError
from .base import NumpyRunner, module_available


def openvino_available() -> bool:
    """True when ``openvino`` can be imported."""
    return module_available("openvino")


class OpenVINOModel(NumpyRunner):
    """An ONNX model compiled by OpenVINO for the CPU with ``threads`` inference threads (latency hint)."""

    def __init__(self, path: str | Path, threads: int = 2) -> None:
        if not openvino_available():
            raise UnsupportedError("openvino is not installed; install the extra: pip install 'lowbit[openvino]'")
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        self.compiled = core.compile_model(
            model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        )
        self.request = self.compiled.create_infer_request()

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """One forward pass on a float32 numpy batch."""
        return self.request.infer({0: x})[self.compiled.output(0)]

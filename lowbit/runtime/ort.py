"""ONNX Runtime execution behind a torch-like callable, so ``lowbit.evaluate`` works on it.

Example:
    >>> import tempfile, os, torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> m = lowbit.quantize_(FmnistMLP(), lowbit.load_recipe("w8a8"), data=[torch.randn(8, 1, 28, 28)])
    >>> path = os.path.join(tempfile.mkdtemp(), "mlp.onnx")
    >>> _ = lowbit.export_onnx(m, torch.randn(1, 1, 28, 28), path)
    >>> OrtModel(path)(torch.randn(3, 1, 28, 28)).shape
    torch.Size([3, 10])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UnsupportedError
from .base import NumpyRunner, module_available


def ort_available() -> bool:
    """True when ``onnxruntime`` can be imported."""
    return module_available("onnxruntime")


class OrtModel(NumpyRunner):
    """An ONNX model in an ``onnxruntime.InferenceSession`` (CPU, ``threads`` intra-op threads).

    Call it with a torch tensor; it returns a torch tensor. ``optimized_path`` saves the graph
    after ONNX Runtime's fusions (to check which integer kernels run).
    """

    def __init__(self, path: str | Path, threads: int = 2, optimized_path: str | Path | None = None) -> None:
        if not ort_available():
            raise UnsupportedError("onnxruntime is not installed; install the extra: pip install 'lowbit[onnx]'")
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if optimized_path is not None:
            so.optimized_model_filepath = str(optimized_path)
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """One forward pass on a float32 numpy batch."""
        return self.session.run(None, {self.input_name: x})[0]

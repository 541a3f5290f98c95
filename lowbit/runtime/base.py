"""Common shape of runtime wrappers: numpy in / numpy out, callable like a torch model."""

from __future__ import annotations

import importlib.util

import numpy as np
import torch


def module_available(name: str) -> bool:
    """True when the Python module ``name`` can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None


class NumpyRunner:
    """Subclasses implement ``run_numpy``; this gives them ``__call__(tensor) -> tensor`` and the bits
    of the ``nn.Module`` interface that ``lowbit.evaluate`` uses (``eval`` / ``train`` / ``training``)."""

    input_dtype: type = np.float32
    training = False

    def run_numpy(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must implement run_numpy")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.run_numpy(x.detach().cpu().float().numpy().astype(self.input_dtype))
        return torch.from_numpy(np.array(out))

    def eval(self) -> NumpyRunner:
        return self

    def train(self, mode: bool = True) -> NumpyRunner:
        return self

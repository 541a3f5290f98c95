"""Fashion-MNIST reader (gzip IDX files, as shipped by Debian's ``dataset-fashion-mnist``).

Images are scaled to [0, 1] and normalized ``x' = (x - mean) / std`` with the standard
Fashion-MNIST statistics mean = 0.2860, std = 0.3530 (changeable).

Example:
    >>> from lowbit.data import load_fashion_mnist
    >>> ds = load_fashion_mnist("test")        # doctest: +SKIP
    >>> ds.images.shape, ds.labels.shape       # doctest: +SKIP
    (torch.Size([10000, 1, 28, 28]), torch.Size([10000]))
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_HINT = (
    "install it with `sudo apt-get install -y dataset-fashion-mnist` (files land in "
    f"{DEFAULT_DIR}), or point --data-dir / LOWBIT_DATA at a folder holding the four "
    "gzip IDX files"
)


@dataclass(frozen=True)
class TensorDataset:
    """A labelled image set held in memory: ``images`` (N,1,28,28) float32, ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, batch_size: int = 256):
        """Yield ``(images, labels)`` batches in order."""
        for i in range(0, len(self), batch_size):
            yield self.images[i : i + batch_size], self.labels[i : i + batch_size]

    def subset(self, n: int, seed: int = 0) -> TensorDataset:
        """A seeded random subset of ``n`` samples (all if ``n >= len``)."""
        if n <= 0:
            raise ConfigError(f"subset size must be positive, got {n}")
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n]
        return TensorDataset(self.images[idx], self.labels[idx])


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the IDX files: explicit argument, else ``$LOWBIT_DATA``, else the Debian path."""
    d = data_dir or os.environ.get("LOWBIT_DATA") or DEFAULT_DIR
    return Path(d)


def _read_idx(path: Path, expect_magic: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"Fashion-MNIST file {path} not found; {INSTALL_HINT}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"Fashion-MNIST file {path} is not a readable gzip IDX file ({e})") from None
    if len(raw) < 8:
        raise DataError(f"{path} is truncated ({len(raw)} bytes)")
    magic, n = struct.unpack(">II", raw[:8])
    if magic != expect_magic:
        raise DataError(f"{path} has IDX magic {magic:#x}, expected {expect_magic:#x}")
    if magic == 2051:
        rows, cols = struct.unpack(">II", raw[8:16])
        arr = np.frombuffer(raw, dtype=np.uint8, offset=16)
        if arr.size != n * rows * cols:
            raise DataError(f"{path} holds {arr.size} pixels, header says {n}x{rows}x{cols}")
        return arr.reshape(n, 1, rows, cols)
    arr = np.frombuffer(raw, dtype=np.uint8, offset=8)
    if arr.size != n:
        raise DataError(f"{path} holds {arr.size} labels, header says {n}")
    return arr


def load_fashion_mnist(
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
    *,
    mean: float = FMNIST_MEAN,
    std: float = FMNIST_STD,
) -> TensorDataset:
    """Load a Fashion-MNIST split as normalized float tensors.

    Math: ``x = (pixel / 255 - mean) / std``.

    Args:
        split: ``"train"`` (60 000 images) or ``"test"`` (10 000).
        data_dir: folder with the gzip IDX files (default ``$LOWBIT_DATA`` or the Debian path).
        mean, std: normalization constants.

    Raises:
        ConfigError: unknown split or non-positive std.
        DataError: files missing or malformed (the message says how to install them).
    """
    if split not in _FILES:
        raise ConfigError(f"unknown split {split!r}; use one of {sorted(_FILES)}")
    if not std > 0:
        raise ConfigError(f"std must be positive, got {std}")
    d = resolve_data_dir(data_dir)
    if not d.is_dir():
        raise DataError(f"Fashion-MNIST folder {d} does not exist; {INSTALL_HINT}")
    img_f, lab_f = _FILES[split]
    images = _read_idx(d / img_f, 2051)
    labels = _read_idx(d / lab_f, 2049)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = (x - mean) / std
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))

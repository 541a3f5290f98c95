"""Datasets: the Fashion-MNIST reader and helpers to turn any iterable into calibration batches."""

from .fmnist import (
    CLASSES as CLASSES,
)
from .fmnist import (
    FMNIST_MEAN as FMNIST_MEAN,
)
from .fmnist import (
    FMNIST_STD as FMNIST_STD,
)
from .fmnist import (
    TensorDataset as TensorDataset,
)
from .fmnist import (
    load_fashion_mnist as load_fashion_mnist,
)
from .text import (
    load_corpus as load_corpus,
)

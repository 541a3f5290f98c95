"""Datasets: the Fashion-MNIST reader and helpers to turn any iterable into calibration batches."""

from .fmnist import (
    CLASSES as CLASSES,
    FMNIST_MEAN as FMNIST_MEAN,
    FMNIST_STD as FMNIST_STD,
    TensorDataset as TensorDataset,
    load_fashion_mnist as load_fashion_mnist,
)

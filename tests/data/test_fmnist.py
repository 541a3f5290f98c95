import gzip

import pytest
import torch

from lowbit.data import FMNIST_MEAN, FMNIST_STD, load_fashion_mnist
from lowbit.errors import ConfigError, DataError


def test_test_split_shapes_and_normalization(fmnist_test):
    assert fmnist_test.images.shape == (10_000, 1, 28, 28)
    assert fmnist_test.labels.shape == (10_000,)
    assert set(fmnist_test.labels.unique().tolist()) == set(range(10))
    assert torch.bincount(fmnist_test.labels).tolist() == [1000] * 10
    raw = fmnist_test.images * FMNIST_STD + FMNIST_MEAN
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    assert raw.mean().item() == pytest.approx(0.2860, abs=0.003)


def test_custom_normalization():
    ds = load_fashion_mnist("test", mean=0.0, std=1.0)
    assert ds.images.min() >= 0 and ds.images.max() <= 1


def test_subset_is_seeded(fmnist_test):
    a, b = fmnist_test.subset(100, seed=3), fmnist_test.subset(100, seed=3)
    assert torch.equal(a.labels, b.labels) and len(a) == 100


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="split"):
        load_fashion_mnist("valid")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("test", tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 12))
    with pytest.raises(DataError, match="magic"):
        load_fashion_mnist("test", tmp_path)

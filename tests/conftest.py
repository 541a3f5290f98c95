import os

import pytest
import torch

os.environ.setdefault("LOWBIT_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fmnist_test():
    from lowbit.data import load_fashion_mnist

    return load_fashion_mnist("test")


@pytest.fixture(scope="session")
def fmnist_calib():
    from lowbit.data import load_fashion_mnist

    return load_fashion_mnist("train").subset(512, seed=0)


@pytest.fixture(scope="session")
def fmnist_small_test(fmnist_test):
    return fmnist_test.subset(2000, seed=1)

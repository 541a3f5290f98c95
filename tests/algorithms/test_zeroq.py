"""ZeroQ-style distilled calibration data: matches BN statistics, calibrates without any image."""

import pytest
import torch

import lowbit
from lowbit.algorithms.zeroq import ZeroQConfig, distill_data
from lowbit.errors import ConfigError
from lowbit.zoo import load_model


def test_distillation_matches_bn_statistics():
    x, loss = distill_data(load_model("fmnist-resnet"), samples=16, iters=40, batch_size=16)
    assert x.shape == (16, 1, 28, 28) and torch.isfinite(x).all()
    assert loss[-1] < loss[0] / 5


def test_zeroq_quantizes_without_data(fmnist_small_test):
    fp = load_model("fmnist-resnet")
    cfg = lowbit.load_recipe("zeroq-w4a8").replace(samples=32, iters=30)
    assert isinstance(cfg, ZeroQConfig)
    q = lowbit.quantize_(load_model("fmnist-resnet"), cfg)
    assert q.lowbit_info["calibration_samples"] == 32 and q.lowbit_info["distill"]["loss_last"] < q.lowbit_info["distill"]["loss_first"]
    assert all(a.calibrated for a in lowbit.activation_quantizers(q))
    assert lowbit.evaluate(q, fmnist_small_test) >= lowbit.evaluate(fp, fmnist_small_test) - 2.0


def test_model_without_batchnorm_is_refused():
    with pytest.raises(ConfigError, match="no BatchNorm"):
        lowbit.quantize_(load_model("fmnist-mlp"), ZeroQConfig(samples=4, iters=1))


@pytest.mark.parametrize("bad", [{"samples": 0}, {"lr": 0}, {"input_shape": []}, {"iters": 1.5}])
def test_config_validation(bad):
    with pytest.raises(ConfigError):
        ZeroQConfig(**bad)


def test_optional_fine_tuning_on_the_distilled_data():
    cfg = lowbit.load_recipe("zeroq-w4a8").replace(samples=32, iters=20, batch_size=16, fine_tune_epochs=2, fine_tune_lr=1e-4)
    q = lowbit.quantize_(load_model("fmnist-resnet"), cfg)
    ft = q.lowbit_info["fine_tune"]
    assert len(ft["loss"]) == 2 and ft["mse"] < ft["mse_before"]  # closer to the float outputs on the distilled inputs


@pytest.mark.parametrize("bad", [{"fine_tune_epochs": -1}, {"fine_tune_epochs": 1.0}, {"fine_tune_lr": 0}])
def test_fine_tuning_fields_are_validated(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        ZeroQConfig(**bad)

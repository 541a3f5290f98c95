"""Data-free quantization: CLE is exact, bias absorption / correction do what they claim, no data needed."""

import copy
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.algorithms.dfq import DFQConfig
from lowbit.algorithms.dfq.equalize import absorb_high_bias, bn_statistics, clipped_moments, equalization_pairs, equalize
from lowbit.algorithms.dfq.handler import _correct_bias, _relu6_to_relu
from lowbit.errors import ConfigError
from lowbit.transform import FoldBatchNorm
from lowbit.zoo import load_model


def test_cle_is_exact_and_balances_ranges(fmnist_small_test):
    m = load_model("fmnist-mobilenet")
    _relu6_to_relu(m)
    FoldBatchNorm().apply(m)
    x = fmnist_small_test.images[:64]
    with torch.no_grad():
        ref = m(x)
    pairs, skipped = equalization_pairs(m)
    assert len(pairs) == 13 and any("read by 2 ops" in s["reason"] for s in skipped)
    res = equalize(m, pairs)
    assert res["max_log_scale"] < 1e-3
    with torch.no_grad():
        assert torch.allclose(m(x), ref, atol=1e-3)
    a, b, _ = pairs[2]
    r1 = m.get_submodule(a).weight.abs().flatten(1).amax(1)
    l2 = m.get_submodule(b)
    r2 = l2.weight.abs().flatten(1).amax(1) if l2.groups > 1 else l2.weight.abs().transpose(0, 1).flatten(1).amax(1)
    assert torch.allclose(r1, r2, rtol=1e-2)


def test_relu6_blocks_equalization_and_is_named():
    m = load_model("fmnist-mobilenet")
    FoldBatchNorm().apply(m)
    pairs, skipped = equalization_pairs(m)
    assert not pairs and any("ReLU6" in s["reason"] and "relu6_to_relu" in s["reason"] for s in skipped)


def test_high_bias_absorption_keeps_the_function():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        m[1].bias.copy_(torch.rand(8) * 5 + 3)  # large positive BN shift: absorbable
        m[1].weight.copy_(torch.rand(8) * 0.1 + 0.05)
    stats = bn_statistics(m)
    FoldBatchNorm().apply(m)
    x = torch.randn(16, 3, 8, 8) * 0.2
    with torch.no_grad():
        ref = m(x)
        absorbed = absorb_high_bias(m, [("0", "3", "relu")], stats)
        assert absorbed["0"] > 10
        assert torch.allclose(m(x), ref, atol=1e-4)  # 1x1 conv: exact, no padding border


def test_bias_correction_removes_the_mean_output_error():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)).eval()
    q = lowbit.quantize_(m, lowbit.PTQConfig(weight=lowbit.QuantSpec.from_dict({"bits": 4, "granularity": "per_tensor"}), activation=None))
    x = torch.rand(64, 8, 10, 10) * 2 + 0.5
    layer = q[0]
    with torch.no_grad():
        y = torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1)
        before = (layer(x) - y).mean((0, 2, 3)).abs().mean()
        _correct_bias(layer, x.mean((0, 2, 3)))
        after = (layer(x) - y).mean((0, 2, 3)).abs().mean()
    assert after < before / 3


def test_clipped_moments_match_sampling():
    torch.manual_seed(0)
    mu, sd = torch.tensor([0.5, -1.0, 3.0]), torch.tensor([1.0, 2.0, 2.5])
    s = (torch.randn(400_000, 3) * sd + mu).clamp(0, 6)
    m, v = clipped_moments(mu, sd, 0.0, 6.0)
    assert torch.allclose(m, s.mean(0), atol=0.01) and torch.allclose(v, s.var(0), atol=0.03)


def test_dfq_needs_no_data_and_recovers_per_tensor_w4(fmnist_small_test):
    fp = load_model("fmnist-mobilenet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = lowbit.quantize_(copy.deepcopy(fp), lowbit.load_recipe("dfq-w4a8-per-tensor"))
    assert isinstance(lowbit.load_recipe("dfq-w4a8-per-tensor"), DFQConfig)
    info = q.lowbit_info
    assert len(info["equalized_pairs"]) == 13 and info["relu6_replaced"] and info["bias_corrected"]
    assert all(a.calibrated for a in lowbit.activation_quantizers(q))
    assert lowbit.evaluate(q, fmnist_small_test) >= lowbit.evaluate(fp, fmnist_small_test) - 1.5


def test_empirical_bias_correction_uses_data(fmnist_calib, fmnist_small_test):
    cfg = lowbit.load_recipe("dfq-w8a8-per-tensor").replace(bias_correction="empirical", activation_calibration="data")
    q = lowbit.quantize_(load_model("fmnist-resnet"), cfg, data=fmnist_calib)
    assert len(q.lowbit_info["bias_corrected"]) == 10  # every layer, the first included (data knows its input mean)
    assert lowbit.evaluate(q, fmnist_small_test) >= 92.5


def test_data_free_on_a_model_without_batchnorm_names_the_requirement():
    with pytest.raises(ConfigError, match="no BatchNorm.*activation_calibration: data"):
        lowbit.quantize_(load_model("fmnist-mlp"), DFQConfig())


@pytest.mark.parametrize("bad,match", [({"bias_correction": "magic"}, "bias_correction"), ({"input_range": [1, 0]}, "input_range"),
                                       ({"activation_calibration": "guess"}, "activation_calibration"), ({"weight": None}, "weight")])
def test_config_validation(bad, match):
    with pytest.raises(ConfigError, match=match):
        DFQConfig(**bad)

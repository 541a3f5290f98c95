"""ACIQ per-channel bit allocation: optimal under the budget, exact on the int8 container."""

import pytest
import torch

import lowbit
from lowbit.algorithms.aciq import ACIQConfig, allocate_bits
from lowbit.errors import ConfigError
from lowbit.quant import quantize
from lowbit.zoo import load_model


def test_budget_is_met_and_bits_follow_the_error():
    torch.manual_seed(0)
    w = torch.randn(16, 72) * torch.logspace(-2, 1, 16)[:, None]
    bits, err = allocate_bits(w, budget=4.0, clip="mse")
    assert int(bits.sum()) == 64 and int(bits.min()) >= 2 and int(bits.max()) <= 8
    assert bits[-1] == bits.max() and bits[0] == bits.min()  # wide channels carry more of the absolute error
    # greedy = optimal for convex per-channel errors: no single move of one bit lowers the total
    total = err.gather(1, (bits - 2)[:, None]).sum()
    for i in range(16):
        for j in range(16):
            if i != j and bits[i] < 8 and bits[j] > 2:
                b2 = bits.clone()
                b2[i] += 1
                b2[j] -= 1
                assert err.gather(1, (b2 - 2)[:, None]).sum() >= total - 1e-12


def test_allocated_weights_sit_on_the_int8_grid(fmnist_calib):
    q = lowbit.quantize_(load_model("fmnist-resnet"), lowbit.load_recipe("w4a4-aciq"), data=fmnist_calib)
    alloc = q.lowbit_info["bit_allocation"]
    assert len(alloc) == 8 and all(abs(v["mean_bits"] - 4.0) < 1e-6 for v in alloc.values())
    m = q.get_submodule("layers.1.conv1")
    s, z = m.weight_quant.qparams(m.weight)
    codes = quantize(m.weight, s, z, m.weight_quant.spec.format, m.weight_quant.spec.granularity).float()
    assert torch.equal(m.quantized_weight(), m.weight)  # fake-quant reproduces the allocated weights exactly
    used = torch.tensor([len(torch.unique(c)) for c in codes.flatten(1)])
    assert int(used.max()) <= 2 ** 8 and float(used.float().mean()) <= 2 ** 5  # ~4-bit channels use few levels


@pytest.mark.parametrize("bad,match", [({"bit_budget": 9}, "bit_budget"), ({"clip": "l1"}, "clip"),
                                       ({"weight": lowbit.QuantSpec.from_dict({"bits": 4})}, "8-bit per-channel")])
def test_config_validation(bad, match):
    with pytest.raises(ConfigError, match=match):
        ACIQConfig(**bad)

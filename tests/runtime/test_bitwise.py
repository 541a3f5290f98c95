"""Converted binary networks on the XNOR-popcount kernels: exact integer products, same predictions."""

import copy

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.errors import UnsupportedError
from lowbit.quant import PerTensor, quantize
from lowbit.runtime.bitwise import BitwiseLayer, to_bitwise


def _net():
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 70, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(70, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(),
                         nn.Linear(32, 10)).eval()


@pytest.fixture(scope="module", params=["xnor", "bnn"])
def binary_net(request, fmnist_calib):
    calib = fmnist_calib.subset(64, seed=0)
    cfg = lowbit.load_recipe(request.param)
    q = lowbit.quantize_(_net(), cfg, data=calib)
    lowbit.train(q, calib, epochs=1, batch_size=32, progress=False)
    return lowbit.quantize_(q, cfg.replace(step="convert"))


def test_binary_layers_run_bitwise_with_exact_integer_products(binary_net, fmnist_small_test):
    fast, info = to_bitwise(binary_net)
    assert info["bitwise_layers"] == ["3", "5", "8"] and set(info["kept"]) == {"0", "10"}  # first / last stay 8-bit
    x = fmnist_small_test.images[:200]
    with torch.no_grad():
        ref, y = binary_net(x), fast(x)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
        assert torch.equal(y.argmax(1), ref.argmax(1))
        # the integer part, D = sum q b, against a dense float convolution of the codes
        h = binary_net[:3](x)  # the input of layer 3 (conv, folded BN, ReLU)
        layer, orig = fast.get_submodule("3"), binary_net.get_submodule("3")
        assert isinstance(layer, BitwiseLayer)
        q = quantize(h, orig.input_quant.scale, orig.input_quant.zero_point, orig.input_quant.spec.format, PerTensor()).float()
        b = (orig.weight / orig.weight_quant.qparams(orig.weight)[0].view(-1, 1, 1, 1)).round()
        dense = F.conv2d(q, b, padding=1)
        assert torch.equal((layer._product(2 * q - 1) + layer._m(h)) * 0.5, dense)
    assert binary_net.get_submodule("3").weight_quant is not None  # the caller's model is untouched


def test_nonzero_input_zero_point(binary_net):
    m = copy.deepcopy(binary_net.get_submodule("5"))
    m.input_quant.zero_point = torch.tensor(1, dtype=torch.int32)  # grid {-s, 0}
    x = torch.randn(4, 70, 14, 14)
    with torch.no_grad():
        torch.testing.assert_close(BitwiseLayer(m)(x), m(x), rtol=1e-5, atol=1e-5)


def test_deepcopy_keeps_pinned_weight_grids(binary_net, fmnist_small_test):
    x = fmnist_small_test.images[:32]
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(binary_net)(x), binary_net(x))


def test_a_model_without_binary_layers_is_refused_with_reasons(fmnist_calib):
    q = lowbit.quantize_(_net(), lowbit.load_recipe("w8a8"), data=fmnist_calib.subset(32, seed=0))
    with pytest.raises(UnsupportedError, match="no layer can run bitwise .*8-bit inputs.*binary recipe"):
        to_bitwise(q)
    with pytest.raises(UnsupportedError, match="torch.nn.Module"):
        to_bitwise("model.pt")

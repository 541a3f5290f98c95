"""Invariant: fake-quant layers equal integer execution (int accumulation of q_x - Z_x times q_w)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.config import QuantSpec
from lowbit.nn import ActQuant, QuantAdd, QuantConv1d, QuantConv2d, QuantLinear
from lowbit.quant import Affine, IntFormat, PerChannel, PerGroup, quantize

W8 = QuantSpec(format=IntFormat(bits=8, signed=True), granularity=PerChannel(0))
A8 = QuantSpec(format=IntFormat(bits=8, signed=False), mapping=Affine())


def _calibrated(qmod, x):
    qmod.input_quant.start_observing()
    qmod(x)
    qmod.input_quant.finish_observing()
    return qmod


def _integer_reference(qmod, x, conv_fn):
    """Integer execution: int64 accumulator of (q_x - Z_x) * q_w, then one float rescale + bias."""
    aq, wq = qmod.input_quant, qmod.weight_quant
    qx = quantize(x, aq.scale, aq.zero_point, aq.spec.format).to(torch.int64) - int(aq.zero_point)
    sw, zw = wq.qparams(qmod.weight)
    qw = quantize(qmod.weight, sw, zw, wq.spec.format, wq.spec.granularity).to(torch.int64)
    acc = conv_fn(qx.double(), qw.double())  # integers below 2^53: exact in float64
    assert torch.equal(acc, acc.round())
    shape = [1, -1] + [1] * (acc.ndim - 2)
    return (acc * (aq.scale.double() * sw.double()).reshape(shape) + qmod.bias.double().reshape(shape)).float()


def test_linear_fake_quant_equals_integer_execution():
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    x = torch.randn(32, 64)
    q = _calibrated(QuantLinear.from_float(lin, W8, A8), x)
    ref = _integer_reference(q, x, lambda a, w: a @ w.T)
    torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 8], ids=["dense", "grouped", "depthwise"])
def test_conv2d_fake_quant_equals_integer_execution(groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
    x = torch.randn(4, 8, 10, 10)
    q = _calibrated(QuantConv2d.from_float(conv, W8, A8), x)
    # pad with the zero point's real value (0) — real zero is exact, so zero padding commutes
    ref = _integer_reference(q, x, lambda a, w: F.conv2d(a, w, padding=1, groups=groups))
    torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-5)


def test_conv1d_quantizes_and_keeps_shape():
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 6, 5)
    x = torch.randn(3, 4, 20)
    q = _calibrated(QuantConv1d.from_float(conv, W8, A8), x)
    ref = _integer_reference(q, x, lambda a, w: F.conv1d(a, w))
    torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-5)


def test_from_float_does_not_touch_the_original():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    before = copy.deepcopy(lin.state_dict())
    q = QuantLinear.from_float(lin, QuantSpec(format=IntFormat(bits=2)), None)
    q(torch.randn(2, 8))
    for k, v in lin.state_dict().items():
        assert torch.equal(v, before[k])


def test_weight_quant_refreshes_when_weight_changes():
    lin = QuantLinear.from_float(nn.Linear(8, 4), W8, None)
    s1 = lin.weight_quant.qparams(lin.weight)[0].clone()
    with torch.no_grad():
        lin.weight.mul_(3)
    s2 = lin.weight_quant.qparams(lin.weight)[0]
    torch.testing.assert_close(s2, s1 * 3)


def test_per_group_weight_sqnr_floor():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    spec = QuantSpec(format=IntFormat(bits=4), granularity=PerGroup(32), observer="mse")
    q = QuantLinear.from_float(lin, spec, None)
    from lowbit.report import sqnr_db

    assert sqnr_db(lin.weight, q.quantized_weight()) > 18.0  # ~6 dB/bit x 4 bits, minus clipping


def test_dynamic_activation_needs_no_calibration():
    aq = ActQuant(QuantSpec(format=IntFormat(bits=8, signed=False), mapping=Affine(), dynamic=True))
    x = torch.rand(4, 10) * torch.tensor([1, 10, 100, 1000.0])[:, None]
    y = aq(x)
    assert (y - x).abs().max() <= 1000 / 255 / 2 + 1e-3
    assert aq.calibrated


def test_quant_add_passes_non_tensors_through():
    add = QuantAdd(A8)
    assert add(2, 3) == 5

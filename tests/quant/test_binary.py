import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lowbit.errors import ConfigError
from lowbit.quant import (
    binarize_weight,
    binary_scale,
    sign_ste,
    ternarize_weight,
    ternary_scale,
    ttq_quantize,
    twn_threshold,
    xnor_activation_scale,
)

floats = st.floats(-4, 4, allow_nan=False, width=32)
matrices = st.integers(1, 6).flatmap(lambda c: st.lists(st.lists(floats, min_size=3, max_size=3), min_size=c, max_size=c)).map(torch.tensor)


# --------------------------------------------------------------------------- sign_ste


def test_sign_of_zero_is_plus_one():
    y = sign_ste(torch.tensor([0.0, -0.0, -1e-30, 1e-30]))
    assert y.tolist() == [1.0, 1.0, -1.0, 1.0]


@settings(max_examples=100, deadline=None)
@given(x=st.lists(floats, min_size=1, max_size=32).map(torch.tensor))
def test_sign_ste_values_are_exactly_plus_minus_one(x):
    y = sign_ste(x)
    assert set(y.tolist()) <= {-1.0, 1.0}
    assert torch.equal(y, torch.where(x >= 0, 1.0, -1.0))


def test_sign_ste_gradient_is_hardtanh_ste():
    x = torch.tensor([-3.0, -1.0, -0.999, 0.0, 0.5, 1.0, 1.001, 7.0], requires_grad=True)
    g = torch.arange(1.0, 9.0)
    (gx,) = torch.autograd.grad(sign_ste(x), x, g)
    assert gx.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0]


def test_sign_ste_keeps_dtype_and_shape():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    y = sign_ste(x)
    assert y.dtype == torch.float64 and y.shape == x.shape


# --------------------------------------------------------------------------- BWN / XNOR


W = torch.tensor([[0.5, -1.5, 0.0, 2.0], [-0.25, 0.25, 0.75, -0.25], [0.0, 0.0, 0.0, 0.0]])


def test_binary_scale_is_mean_abs_per_channel_by_hand():
    assert binary_scale(W).tolist() == [1.0, 0.375, 0.0]
    assert binary_scale(W, axis=1).tolist() == pytest.approx([0.75 / 3, 1.75 / 3, 0.75 / 3, 2.25 / 3], rel=1e-6)
    assert binary_scale(W, axis=None).item() == pytest.approx(5.5 / 12)
    assert binary_scale(W, axis=-2).tolist() == [1.0, 0.375, 0.0]


def test_binarize_weight_values_by_hand():
    assert binarize_weight(W).tolist() == [
        [1.0, -1.0, 1.0, 1.0],
        [-0.375, 0.375, 0.375, -0.375],
        [0.0, 0.0, 0.0, 0.0],
    ]


@settings(max_examples=100, deadline=None)
@given(w=matrices)
def test_binarize_weight_has_two_levels_per_channel_and_is_idempotent(w):
    y = binarize_weight(w)
    a = w.abs().double().mean(dim=1).float()  # the documented float64 accumulation
    for c in range(w.shape[0]):
        assert set(y[c].tolist()) <= {-a[c].item(), a[c].item()}
    assert torch.equal(y, a[:, None] * torch.where(w >= 0, 1.0, -1.0))
    assert torch.equal(binarize_weight(y), y)


def test_binarize_weight_conv_weight_per_output_channel():
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    y = binarize_weight(w)
    a = w.abs().double().mean(dim=(1, 2, 3)).float()
    assert_close(y.abs(), a[:, None, None, None].expand_as(w), rtol=0, atol=0)


def test_binarize_weight_gradient_is_clipped_ste():
    w = torch.tensor([[0.5, -1.5], [1.0, -0.2]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    (gw,) = torch.autograd.grad(binarize_weight(w), w, g)
    assert gw.tolist() == [[1.0, 0.0], [3.0, 4.0]]


# --------------------------------------------------------------------------- TWN


def test_twn_threshold_by_hand():
    assert twn_threshold(torch.tensor([1.0, -2.0, 3.0, 0.0])).item() == pytest.approx(0.7 * 1.5)
    assert twn_threshold(torch.tensor([1.0, -2.0, 3.0, 0.0]), factor=0.5).item() == 0.75
    assert twn_threshold(W, axis=0).tolist() == pytest.approx([0.7, 0.7 * 0.375, 0.0])


def test_ternarize_weight_by_hand():
    w = torch.tensor([0.1, -1.0, 2.0, 0.0, -0.6, 0.3])
    # mean|w| = 4/6, D = 0.7 * 4/6 = 0.4667; |w| > D: 1.0, 2.0, 0.6 -> a = 3.6 / 3 = 1.2
    a = torch.tensor([1.0, 2.0, 0.6]).double().mean().float()
    assert ternary_scale(w).item() == a.item()
    assert torch.equal(ternarize_weight(w), torch.tensor([0.0, -1.0, 1.0, 0.0, -1.0, 0.0]) * a)


def test_ternarize_weight_per_channel_by_hand():
    # row 0: D = 0.7 -> {-1.5, 2.0}, a = 1.75; row 1: D = 0.2625 -> {0.75}, a = 0.75; row 2: all zero
    y = ternarize_weight(W, axis=0)
    assert y.tolist() == [[0.0, -1.75, 0.0, 1.75], [0.0, 0.0, 0.75, 0.0], [0.0, 0.0, 0.0, 0.0]]


def test_ternarize_weight_explicit_delta_per_channel():
    y = ternarize_weight(W, delta=torch.tensor([0.4, 0.1, 0.0]), axis=0)
    a0 = torch.tensor([0.5, 1.5, 2.0]).double().mean().float()  # row 0: |w| > 0.4
    assert torch.equal(y[0], torch.tensor([1.0, -1.0, 0.0, 1.0]) * a0)
    assert y[1:].tolist() == [[-0.375, 0.375, 0.375, -0.375], [0.0, 0.0, 0.0, 0.0]]


@settings(max_examples=100, deadline=None)
@given(w=matrices, per_channel=st.booleans())
def test_ternarize_weight_has_three_levels_and_is_idempotent(w, per_channel):
    axis = 0 if per_channel else None
    y = ternarize_weight(w, axis=axis)
    a = ternary_scale(w, axis=axis)
    rows = y if per_channel else y.reshape(1, -1)
    for c in range(rows.shape[0]):
        alpha = a.reshape(-1)[c].item()
        assert alpha > 0
        assert set(rows[c].tolist()) <= {-alpha, 0.0, alpha}
    assert torch.equal(ternarize_weight(y, axis=axis), y)


def test_ternarize_weight_gradient_is_identity_ste():
    w = torch.tensor([0.1, -1.0, 2.0, 0.0, 5.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    (gw,) = torch.autograd.grad(ternarize_weight(w), w, g)
    assert torch.equal(gw, g)


def test_ternary_scale_without_weights_above_threshold_is_positive_not_nan():
    w = torch.tensor([0.1, -0.2, 0.3])
    assert ternary_scale(w, delta=0.5).item() == 0.5  # falls back to D
    assert torch.equal(ternarize_weight(w, delta=0.5), torch.zeros(3))
    z = torch.zeros(2, 3)
    assert ternary_scale(z).item() == torch.finfo(torch.float32).eps
    assert torch.equal(ternarize_weight(z, axis=0), z)
    assert not torch.isnan(ternary_scale(z, axis=0)).any()


# --------------------------------------------------------------------------- TTQ


def test_ttq_forward_and_gradients_by_hand():
    # max|w| = 1 -> D = 0.05; |w| = D (0.05) is in the dead zone
    w = torch.tensor([-1.0, -0.04, 0.05, 0.02, 0.5, -0.3], requires_grad=True)
    wp = torch.tensor(2.0, requires_grad=True)
    wn = torch.tensor(3.0, requires_grad=True)
    y = ttq_quantize(w, wp, wn)
    assert y.tolist() == [-3.0, 0.0, 0.0, 0.0, 2.0, -3.0]
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    gw, gwp, gwn = torch.autograd.grad(y, (w, wp, wn), g)
    assert gw.tolist() == [3.0 * 1, 2.0, 3.0, 4.0, 2.0 * 5, 3.0 * 6]
    assert gwp.item() == 5.0
    assert gwn.item() == -(1.0 + 6.0)


def test_ttq_scale_gradients_match_autograd_of_the_forward_formula():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 5, generator=gen)
    g = torch.randn(8, 5, generator=gen)
    wp = torch.tensor([0.7], requires_grad=True)
    wn = torch.tensor([1.3], requires_grad=True)
    d = 0.1 * w.abs().max()
    ref = wp * (w > d) - wn * (w < -d)
    ref_gwp, ref_gwn = torch.autograd.grad(ref, (wp, wn), g)
    y = ttq_quantize(w, wp, wn, t=0.1)
    assert torch.equal(y, ref.detach())
    gwp, gwn = torch.autograd.grad(y, (wp, wn), g)
    assert gwp.shape == (1,) and gwn.shape == (1,)
    assert_close(gwp, ref_gwp)
    assert_close(gwn, ref_gwn)


@settings(max_examples=50, deadline=None)
@given(w=matrices, wp=st.floats(0.01, 4), wn=st.floats(0.01, 4))
def test_ttq_levels_and_idempotence(w, wp, wn):
    y = ttq_quantize(w, wp, wn)
    wp32, wn32 = torch.tensor(wp).item(), torch.tensor(wn).item()
    assert set(y.reshape(-1).tolist()) <= {wp32, 0.0, -wn32}
    # re-quantizing keeps both levels iff both exceed the new threshold 0.05 * max(wp, wn)
    if min(wp32, wn32) > 0.05 * max(wp32, wn32):
        assert torch.equal(ttq_quantize(y, wp, wn), y)


# --------------------------------------------------------------------------- XNOR activation scale


def test_xnor_activation_scale_is_mean_abs_convolved_with_box_filter():
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    a = x.abs().mean(dim=1, keepdim=True)
    ref = F.conv2d(a, torch.full((1, 1, 3, 3), 1 / 9), stride=2, padding=1)
    assert_close(xnor_activation_scale(x, kernel_size=3, stride=2, padding=1), ref)
    assert xnor_activation_scale(torch.tensor([[1.0, -2.0, 3.0, 0.0], [0.0, 0.0, 0.0, -4.0]])).tolist() == [[1.5], [1.0]]


# --------------------------------------------------------------------------- errors

one_arg = [sign_ste, binarize_weight, binary_scale, twn_threshold, ternarize_weight, ternary_scale, xnor_activation_scale]


@pytest.mark.parametrize("fn", one_arg, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", [torch.tensor([[1, 2], [3, 4]]), torch.tensor([[True, False]]), [[1.0, 2.0]]], ids=["int", "bool", "list"])
def test_non_float_input_is_config_error(fn, bad):
    with pytest.raises(ConfigError, match=fn.__name__):
        fn(bad)


def test_ttq_non_float_input_is_config_error():
    with pytest.raises(ConfigError, match="floating-point"):
        ttq_quantize(torch.tensor([1, 2]), 1.0, 1.0)


@pytest.mark.parametrize("fn", [binarize_weight, binary_scale, twn_threshold, ternarize_weight, ternary_scale], ids=lambda f: f.__name__)
@pytest.mark.parametrize("axis", [2, -3, 1.0, True, "0"])
def test_bad_axis_is_config_error(fn, axis):
    with pytest.raises(ConfigError, match=r"axis=.* is invalid for a 2-d tensor; use an int in -2\.\.1"):
        fn(torch.randn(3, 4), axis=axis)


@pytest.mark.parametrize("factor", [0, -0.7, float("nan"), float("inf"), True])
def test_twn_factor_must_be_positive(factor):
    with pytest.raises(ConfigError, match=r"factor=.* is outside \(0, inf\)"):
        twn_threshold(torch.randn(4), factor=factor)


@pytest.mark.parametrize("delta", [-0.1, torch.tensor([-1.0]), float("nan")])
def test_ternary_negative_delta_is_config_error(delta):
    with pytest.raises(ConfigError, match="delta must be finite and >= 0"):
        ternarize_weight(torch.randn(4), delta=delta)


def test_ternary_delta_with_wrong_size_is_config_error():
    with pytest.raises(ConfigError, match="delta has 2 elements"):
        ternarize_weight(torch.randn(3, 4), delta=torch.tensor([0.1, 0.2]), axis=0)
    with pytest.raises(ConfigError, match="delta must be None, a number or a float tensor"):
        ternarize_weight(torch.randn(3, 4), delta="0.1")


@pytest.mark.parametrize("t", [0, 1, 1.5, -0.05, float("nan")])
def test_ttq_t_must_be_inside_zero_one(t):
    with pytest.raises(ConfigError, match=r"t=.* is outside \(0, 1\.0\)"):
        ttq_quantize(torch.randn(4), 1.0, 1.0, t=t)


@pytest.mark.parametrize("name", ["wp", "wn"])
@pytest.mark.parametrize("bad", [0.0, -1.0, torch.tensor(-0.5), float("inf")])
def test_ttq_scales_must_be_positive(name, bad):
    kwargs = {"wp": 1.0, "wn": 1.0, name: bad}
    with pytest.raises(ConfigError, match=rf"{name}=.* is outside \(0, inf\)"):
        ttq_quantize(torch.randn(4), **kwargs)


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 2.0]), torch.tensor(1), "1.0"])
def test_ttq_scales_must_be_float_scalars(bad):
    with pytest.raises(ConfigError, match="wp must be a positive float scalar"):
        ttq_quantize(torch.randn(4), bad, 1.0)


def test_xnor_activation_scale_rejects_3d_input():
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\) or \(N, F\), got shape \(2, 3, 4\)"):
        xnor_activation_scale(torch.randn(2, 3, 4))

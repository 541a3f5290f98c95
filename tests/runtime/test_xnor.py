"""XNOR-popcount execution: bit-exact with the float ±1 simulation on both backends, clear errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import ConfigError, UnsupportedError
from lowbit.runtime import xnor
from lowbit.runtime.xnor import binarize, binary_conv2d, binary_linear, pack_conv_weight, pack_signs, unpack_signs, xnor_backend, xnor_matmul

HAS_NUMBA = xnor._numba_kernels() is not None


@pytest.fixture(params=["numba", "torch"])
def backend(request, monkeypatch):
    """Run a test on the compiled kernels and again on the pure-torch fallback."""
    if request.param == "numba" and not HAS_NUMBA:
        pytest.skip("numba is not installed (pip install 'lowbit[binary]')")
    if request.param == "torch":
        monkeypatch.setattr(xnor, "_numba_kernels", lambda: None)
    assert xnor_backend() == request.param
    return request.param


def pm1(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def reference_pack(x: torch.Tensor) -> torch.Tensor:
    """Independent packing: numpy's little-endian packbits, bytes read as little-endian int64 words."""
    n = x.shape[-1]
    bits = np.zeros((*x.shape[:-1], -(-n // 64) * 64), dtype=np.uint8)
    bits[..., :n] = (x >= 0).numpy()
    return torch.from_numpy(np.packbits(bits, axis=-1, bitorder="little").view("<i8").copy())


# ---------------------------------------------------------------- packing
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 4), n=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_pack_unpack_is_identity_and_matches_packbits(rows, n, seed):
    x = pm1(rows, n, seed=seed)
    p = pack_signs(x)
    assert p.shape == (rows, -(-n // 64)) and p.dtype == torch.int64
    assert torch.equal(p, reference_pack(x))
    assert torch.equal(unpack_signs(p, n), x)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 127, 128, 129, 1000])
def test_pack_tail_bits_are_zero(backend, n):
    p = pack_signs(torch.ones(3, n))  # every real bit set
    rem = n % 64
    full = -1 if rem == 0 else (1 << rem) - 1
    assert p[:, :-1].eq(-1).all() and p[:, -1].eq(full).all()


def test_pack_bnn_sign_convention(backend):
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, float("nan"), float("inf"), -float("inf")])
    assert pack_signs(x).tolist() == [0b0100111]  # 0 and -0 are +1, NaN is -1
    assert binarize(x).tolist() == [1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int8, torch.int64])
def test_pack_dtypes_and_batch_dims(backend, dtype):
    x = (torch.randn(2, 3, 130, generator=torch.Generator().manual_seed(1)) * 5).to(dtype)
    p = pack_signs(x)
    assert p.shape == (2, 3, 3)
    assert torch.equal(p, reference_pack(x.float()))


# ---------------------------------------------------------------- xnor_matmul
@pytest.mark.parametrize("M,N,n", [(1, 1, 1), (7, 5, 63), (33, 65, 64), (40, 70, 130), (65, 129, 1000)])
def test_xnor_matmul_equals_float_matmul(backend, M, N, n):
    a, b = pm1(M, n, seed=M), pm1(N, n, seed=N + 1)
    out = xnor_matmul(pack_signs(a), pack_signs(b), n)
    assert out.dtype == torch.int32 and out.shape == (M, N)
    assert torch.equal(out, (a @ b.T).to(torch.int32))


def test_xnor_matmul_extremes_and_garbage_tail(backend):
    n = 70
    a = torch.ones(2, n)
    a[1] = -1
    pa, pb = pack_signs(a), pack_signs(torch.ones(1, n))
    assert xnor_matmul(pa, pb, n).tolist() == [[70], [-70]]
    pa[:, -1] |= ~((1 << 6) - 1)  # set all 58 padding bits of the last word: they must not count
    assert xnor_matmul(pa, pb, n).tolist() == [[70], [-70]]


def test_xnor_matmul_empty(backend):
    assert xnor_matmul(torch.zeros(0, 2, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64), 100).shape == (0, 3)


# ---------------------------------------------------------------- layers vs the float simulation
def test_binary_linear_equals_float_simulation(backend):
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(3, 5, 300, generator=g), torch.randn(17, 300, generator=g)
    x[0, 0, :10] = 0.0  # sign(0) = +1 on both sides
    alpha, bias = w.abs().mean(1), torch.randn(17, generator=g)
    ref = F.linear(binarize(x), binarize(w)) * alpha + bias
    y = binary_linear(x, pack_signs(w), 300, alpha=alpha, bias=bias)
    assert y.shape == (3, 5, 17) and torch.equal(y, ref)
    assert torch.equal(binary_linear(x, pack_signs(w), 300), F.linear(binarize(x), binarize(w)))
    assert torch.equal(binary_linear(x.double(), pack_signs(w), 300, alpha=0.5), F.linear(binarize(x.double()), binarize(w.double())) * 0.5)


@pytest.mark.parametrize("c_in,kernel", [(3, (3, 3)), (70, (3, 3)), (64, (1, 3)), (5, (5, 5))])
@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1), (2, 0), (1, 2), ((1, 2), (2, 1))])
def test_binary_conv2d_equals_float_simulation(backend, c_in, kernel, stride, padding):
    g = torch.Generator().manual_seed(c_in)
    x, w = torch.randn(2, c_in, 9, 8, generator=g), torch.randn(6, c_in, *kernel, generator=g)
    alpha, bias = w.abs().mean((1, 2, 3)), torch.randn(6, generator=g)
    ref = F.conv2d(binarize(x), binarize(w), stride=stride, padding=padding) * alpha.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    y = binary_conv2d(x, pack_conv_weight(w), w.shape, stride=stride, padding=padding, alpha=alpha, bias=bias)
    assert y.shape == ref.shape and y.is_contiguous()
    assert torch.equal(y, ref)


def test_binary_conv2d_padding_is_zero_not_minus_one(backend):
    # all -1 input and weights: an interior output sums 9 agreements, a corner only 4 real taps
    x, w = -torch.ones(1, 1, 3, 3), -torch.ones(1, 1, 3, 3)
    y = binary_conv2d(x, pack_conv_weight(w), w.shape, padding=1)
    assert y[0, 0].tolist() == [[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]


# ---------------------------------------------------------------- errors
def test_errors_packing():
    with pytest.raises(UnsupportedError, match="torch.Tensor"):
        pack_signs(np.ones(4))
    with pytest.raises(UnsupportedError, match="2 \\* b - 1"):
        pack_signs(torch.ones(4, dtype=torch.bool))
    with pytest.raises(ConfigError, match="non-empty"):
        pack_signs(torch.ones(3, 0))
    with pytest.raises(ConfigError, match="needs ceil\\(100/64\\) = 2"):
        unpack_signs(torch.zeros(1, 3, dtype=torch.int64), 100)
    with pytest.raises(UnsupportedError, match="int64"):
        unpack_signs(torch.zeros(1, 2, dtype=torch.int32), 100)


def test_errors_xnor_matmul():
    a, b = pack_signs(pm1(2, 100)), pack_signs(pm1(3, 100))
    with pytest.raises(ConfigError, match="positive int"):
        xnor_matmul(a, b, 0)
    with pytest.raises(ConfigError, match="b_packed has 1 words per row but n=100"):
        xnor_matmul(a, b[:, :1], 100)
    with pytest.raises(ConfigError, match="n=200 needs"):
        xnor_matmul(a, b, 200)
    with pytest.raises(ConfigError, match="2-D"):
        xnor_matmul(a[0], b, 100)
    with pytest.raises(UnsupportedError, match="pack_signs first"):
        xnor_matmul(pm1(2, 100), b, 100)


def test_errors_binary_linear():
    wp = pack_signs(pm1(4, 100))
    with pytest.raises(ConfigError, match="n=100 input features"):
        binary_linear(torch.randn(2, 99), wp, 100)
    with pytest.raises(UnsupportedError, match="floating-point"):
        binary_linear(torch.ones(2, 100, dtype=torch.int64), wp, 100)
    with pytest.raises(ConfigError, match="alpha has shape \\(3,\\) but the layer has 4 output channels"):
        binary_linear(torch.randn(2, 100), wp, 100, alpha=torch.ones(3))
    with pytest.raises(ConfigError, match="bias"):
        binary_linear(torch.randn(2, 100), wp, 100, bias=torch.ones(5))


def test_errors_binary_conv2d():
    x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    wp = pack_conv_weight(w)
    with pytest.raises(UnsupportedError, match="groups=1 only"):
        binary_conv2d(x, wp, w.shape, groups=3)
    with pytest.raises(UnsupportedError, match="dilation=1 only"):
        binary_conv2d(x, wp, w.shape, dilation=2)
    with pytest.raises(ConfigError, match="pack_conv_weight"):
        binary_conv2d(x, pack_signs(w.flatten(1)), w.shape)
    with pytest.raises(ConfigError, match="expects C_in=3"):
        binary_conv2d(torch.randn(1, 5, 8, 8), wp, w.shape)
    with pytest.raises(ConfigError, match="unsqueeze"):
        binary_conv2d(x[0], wp, w.shape)
    with pytest.raises(ConfigError, match="stride must be"):
        binary_conv2d(x, wp, w.shape, stride=0)
    with pytest.raises(ConfigError, match="padding must be"):
        binary_conv2d(x, wp, w.shape, padding="same")
    with pytest.raises(ConfigError, match="does not fit"):
        binary_conv2d(torch.randn(1, 3, 2, 2), wp, w.shape)

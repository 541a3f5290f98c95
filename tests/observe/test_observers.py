import math
import tracemalloc

import pytest
import torch
from torch.ao.quantization import observer as tao

from lowbit.errors import CalibrationError, ConfigError
from lowbit.observe import (
    ACIQObserver,
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    aciq_alpha,
    make_observer,
)
from lowbit.quant import Affine, IntFormat, PerChannel, PerTensor, Symmetric, choose_qparams, fake_quantize

QINT8 = (IntFormat(bits=8, signed=True), Symmetric(), torch.qint8, torch.per_tensor_symmetric)
QUINT8 = (IntFormat(bits=8, signed=False), Affine(), torch.quint8, torch.per_tensor_affine)


def _batches(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 16, 5, generator=g) * (i + 1) + 0.3 * i for i in range(n)]


@pytest.mark.parametrize("case", [QINT8, QUINT8], ids=["qint8-sym", "quint8-affine"])
def test_minmax_matches_torch_ao_exactly(case):
    fmt, mapping, dtype, qscheme = case
    ours, ref = MinMaxObserver(), tao.MinMaxObserver(dtype=dtype, qscheme=qscheme)
    for x in _batches():
        ours.update(x)
        ref(x)
    s, z = ours.qparams(fmt, mapping)
    rs, rz = ref.calculate_qparams()
    torch.testing.assert_close(s, rs.reshape(()), rtol=0, atol=0)
    assert int(z) == int(rz)


@pytest.mark.parametrize("case", [QINT8, QUINT8], ids=["qint8-sym", "quint8-affine"])
def test_per_channel_minmax_matches_torch_ao_exactly(case):
    fmt, mapping, dtype, qscheme = case
    qscheme = torch.per_channel_symmetric if qscheme == torch.per_tensor_symmetric else torch.per_channel_affine
    ours, ref = MinMaxObserver(PerChannel(1)), tao.PerChannelMinMaxObserver(ch_axis=1, dtype=dtype, qscheme=qscheme)
    for x in _batches():
        ours.update(x)
        ref(x)
    s, z = ours.qparams(fmt, mapping)
    rs, rz = ref.calculate_qparams()
    torch.testing.assert_close(s, rs.float(), rtol=0, atol=0)
    assert z.tolist() == rz.tolist()


def test_moving_average_matches_torch_ao_exactly():
    ours = MovingAverageMinMaxObserver(averaging_constant=0.1)
    ref = tao.MovingAverageMinMaxObserver(averaging_constant=0.1, dtype=torch.quint8)
    for x in _batches():
        ours.update(x)
        ref(x)
    s, z = ours.qparams(IntFormat(bits=8, signed=False), Affine())
    rs, rz = ref.calculate_qparams()
    torch.testing.assert_close(s, rs.reshape(()), rtol=0, atol=0)
    assert int(z) == int(rz)


def test_percentile_of_gaussian():
    torch.manual_seed(0)
    ob = PercentileObserver(percentile=99.0)
    for _ in range(4):
        ob.update(torch.randn(50_000))
    lo, hi = ob.compute_range(IntFormat(bits=8), Affine())
    assert lo.item() == pytest.approx(-2.326, abs=0.03)
    assert hi.item() == pytest.approx(2.326, abs=0.03)


def test_histogram_streaming_matches_single_pass():
    """Feeding data in growing-range chunks gives (nearly) the same answer as one big batch."""
    torch.manual_seed(0)
    data = torch.randn(200_000) * torch.linspace(0.5, 2.0, 200_000)
    a, b = PercentileObserver(percentile=99.9), PercentileObserver(percentile=99.9)
    a.update(data)
    for chunk in data.split(10_000):
        b.update(chunk)
    ra, rb = a.compute_range(IntFormat(bits=8), Symmetric()), b.compute_range(IntFormat(bits=8), Symmetric())
    assert rb[1].item() == pytest.approx(ra[1].item(), rel=0.01)


def test_histogram_memory_does_not_grow_with_data():
    ob = MSEObserver()
    torch.manual_seed(0)
    ob.update(torch.randn(10_000))
    tracemalloc.start()
    for i in range(50):
        ob.update(torch.randn(10_000) * (1 + i / 10))
        if i == 9:
            first, _ = tracemalloc.get_traced_memory()
    last, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert ob.hist.shape == (1, 2048)
    assert last - first < 64 * 1024


def _mse(x, lo, hi, fmt, mapping):
    s, z = choose_qparams(lo, hi, fmt, mapping)
    return float(((fake_quantize(x, s, z, fmt) - x) ** 2).mean())


@pytest.mark.parametrize("name", ["mse", "entropy", "aciq", "percentile"])
def test_clipping_observers_beat_minmax_on_heavy_tails(name):
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
    fmt, mapping = IntFormat(bits=4), Symmetric()
    mm = MinMaxObserver()
    mm.update(x)
    ob = make_observer(name, **({"percentile": 99.9} if name == "percentile" else {}))
    ob.update(x)
    assert _mse(x, *ob.compute_range(fmt, mapping), fmt, mapping) < 0.7 * _mse(x, *mm.compute_range(fmt, mapping), fmt, mapping)


def test_mse_observer_is_near_brute_force_optimum():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((50_000,))
    fmt, mapping = IntFormat(bits=4), Symmetric()
    ob = MSEObserver()
    ob.update(x)
    ours = _mse(x, *ob.compute_range(fmt, mapping), fmt, mapping)
    amax = x.abs().max()
    best = min(_mse(x, -a * amax, a * amax, fmt, mapping) for a in torch.linspace(0.05, 1, 400))
    assert ours <= best * 1.03


def test_entropy_uses_fine_histogram_and_differs_from_minmax():
    """ONNX Runtime's 128-bin default leaves the KL search a single candidate (= min-max); 2048 bins clip the tail."""
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
    amax = x.abs().max().item()
    coarse, fine = EntropyObserver(bins=128), EntropyObserver()
    coarse.update(x)
    fine.update(x)
    fmt = IntFormat(bits=8, signed=True)
    assert fine.bins >= 2048
    assert coarse.compute_range(fmt, Symmetric())[1].item() == pytest.approx(amax, rel=0.02)
    t = fine.compute_range(fmt, Symmetric())[1].item()
    assert 0.5 * amax < t < 0.9 * amax
    e = torch.distributions.Exponential(1.0).sample((100_000,))
    ob = EntropyObserver()
    ob.update(e)
    assert 0.4 * e.max().item() < ob.compute_range(IntFormat(bits=8, signed=False), Affine())[1].item() < 0.8 * e.max().item()


def test_entropy_ignores_the_relu_zero_spike():
    """Exact zeros sit on the grid; they must not drag the KL threshold down."""
    torch.manual_seed(0)
    r = torch.relu(torch.randn(100_000))  # half the mass is exactly 0
    ob = EntropyObserver()
    ob.update(r)
    hi = ob.compute_range(IntFormat(bits=8, signed=False), Affine())[1].item()
    assert hi > 0.75 * r.max().item()


@pytest.mark.parametrize("bits,laplace,gauss", [(2, 2.83, 1.71), (3, 3.89, 2.15), (4, 5.03, 2.55), (8, 9.89, 3.92)])
def test_aciq_alpha_matches_banner_table(bits, laplace, gauss):
    assert aciq_alpha(1.0, 2**bits, "laplace") == pytest.approx(laplace, abs=0.02)
    assert aciq_alpha(1.0, 2**bits, "gaussian") == pytest.approx(gauss, abs=0.02)


def test_aciq_observer_gaussian_prior_on_gaussian_data():
    torch.manual_seed(0)
    ob = ACIQObserver(prior="gaussian")
    ob.update(torch.randn(200_000) * 2.0)
    lo, hi = ob.compute_range(IntFormat(bits=4), Affine())
    assert hi.item() == pytest.approx(2.0 * 2.55, rel=0.05)
    assert lo.item() == pytest.approx(-2.0 * 2.55, rel=0.05)


@pytest.mark.parametrize("name", ["minmax", "ema", "percentile", "mse", "entropy", "aciq"])
def test_nan_in_data_is_calibration_error(name):
    ob = make_observer(name)
    with pytest.raises(CalibrationError, match="NaN/Inf"):
        ob.update(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("name", ["minmax", "mse"])
def test_observer_without_data_is_calibration_error(name):
    with pytest.raises(CalibrationError, match="seen no data"):
        make_observer(name).qparams(IntFormat(bits=8), Symmetric())


def test_unknown_observer_is_config_error():
    with pytest.raises(ConfigError, match="known"):
        make_observer("kmeans")


def test_constant_tensor_gets_valid_scale():
    for name in ("minmax", "mse", "entropy", "percentile", "aciq"):
        ob = make_observer(name, PerTensor())
        ob.update(torch.zeros(100))
        s, _ = ob.qparams(IntFormat(bits=8), Symmetric())
        assert math.isfinite(s.item()) and s.item() > 0

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lowbit.errors import ConfigError
from lowbit.quant import (
    codebook_indices,
    codebook_quantize,
    kmeans_codebook,
    pot_levels,
    pot_quantize,
    pot_scale,
    shiftcnn_codes,
    shiftcnn_quantize,
)


def reference_levels(bits: int) -> list[float]:
    """The documented level set, built independently of the implementation."""
    mags = [2.0**-k for k in range(2 ** (bits - 1) - 1)]
    return sorted([0.0] + mags + [-m for m in mags])


def reference_nearest(x: float, levels: list[float]) -> float:
    """Linear-domain nearest level; a tie goes to the smaller magnitude."""
    return min(levels, key=lambda v: (abs(x - v), abs(v)))


def tie_points(bits: int) -> list[float]:
    lv = reference_levels(bits)
    return [(a + b) / 2 for a, b in zip(lv, lv[1:], strict=False)] + lv


bits_st = st.integers(2, 8)
# values in [-1, 1] at unit scale, with the levels and exact midpoints (ties) mixed in
unit_values = st.one_of(st.floats(-1, 1, width=32), st.sampled_from(tie_points(4)), st.sampled_from(tie_points(3)))
vectors = st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=1, max_size=32).map(torch.tensor)


# --------------------------------------------------------------------------- power of two


def test_pot_levels_exact_sets():
    assert pot_levels(2).tolist() == [-1.0, 0.0, 1.0]
    assert pot_levels(3).tolist() == [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    expected4 = [-(2.0**-k) for k in range(7)] + [0.0] + [2.0**-k for k in range(7)]
    assert pot_levels(4).tolist() == sorted(expected4)


@pytest.mark.parametrize("bits", range(2, 9))
def test_pot_levels_count_and_powers_of_two(bits):
    lv = pot_levels(bits)
    assert lv.numel() == 2**bits - 1
    assert lv.tolist() == reference_levels(bits)
    mant, _ = torch.frexp(lv[lv != 0])
    assert bool((mant.abs() == 0.5).all())  # every nonzero level is exactly +-2**e
    assert lv.dtype == torch.float32


def test_pot_scale_rounds_max_up_to_a_power_of_two():
    assert pot_scale(torch.tensor([0.3, -0.2])).item() == 0.5
    assert pot_scale(torch.tensor([0.25, -0.1])).item() == 0.25  # already a power of two
    assert pot_scale(torch.tensor([-3.0])).item() == 4.0
    assert pot_scale(torch.tensor([0.2500001])).item() == 0.5
    assert pot_scale(torch.zeros(3)).item() == 1.0


@settings(max_examples=200, deadline=None)
@given(w=vectors)
def test_pot_scale_covers_max_within_factor_two(w):
    s, amax = pot_scale(w).item(), w.abs().max().item()
    if amax > 0:
        assert amax <= s < 2 * amax


@settings(max_examples=200, deadline=None)
@given(x=st.lists(unit_values, min_size=1, max_size=16), bits=st.sampled_from([2, 3, 4, 5]), scale_exp=st.integers(-6, 3))
def test_pot_quantize_is_nearest_level_in_linear_domain(x, bits, scale_exp):
    scale = 2.0**scale_exp  # power-of-two scale: w / scale is exact
    w = torch.tensor(x) * scale
    q = pot_quantize(w, bits, scale=scale)
    lv = reference_levels(bits)
    expected = [scale * reference_nearest(v, lv) for v in torch.tensor(x).tolist()]
    assert q.tolist() == expected


@settings(max_examples=200, deadline=None)
@given(w=vectors, bits=bits_st)
def test_pot_quantize_values_in_level_set_and_idempotent(w, bits):
    q = pot_quantize(w, bits)
    s = pot_scale(w)
    allowed = set((s * pot_levels(bits)).tolist())
    assert set(q.tolist()) <= allowed
    assert torch.equal(pot_quantize(q, bits), q)


def test_pot_quantize_decision_points_by_hand():
    w = torch.tensor([0.75, 0.7500001, 0.74, 0.375, 0.376, 0.125, 0.126, -0.75, -0.7500001])
    assert pot_quantize(w, 3, scale=1.0).tolist() == [0.5, 1.0, 0.5, 0.25, 0.5, 0.0, 0.25, -0.5, -1.0]


def test_pot_quantize_per_channel_scale_and_clipping():
    w = torch.tensor([[0.3, 2.0], [0.3, -5.0]])
    q = pot_quantize(w, 3, scale=torch.tensor([[1.0], [4.0]]))
    assert q.tolist() == [[0.25, 1.0], [0.0, -4.0]]


def test_pot_quantize_gradient_is_ste_clipped_at_scale():
    w = torch.tensor([0.3, -1.0, 1.5, -0.01], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (gw,) = torch.autograd.grad(pot_quantize(w, 4, scale=1.0), w, g)
    assert gw.tolist() == [1.0, 2.0, 0.0, 4.0]
    (gw,) = torch.autograd.grad(pot_quantize(w, 4), w, g)  # default scale covers every weight
    assert torch.equal(gw, g)


def test_pot_quantize_keeps_dtype():
    w = torch.randn(5, dtype=torch.float64)
    assert pot_quantize(w, 4).dtype == torch.float64
    assert pot_quantize(w.half(), 4).dtype == torch.float16


# --------------------------------------------------------------------------- ShiftCNN


def test_shiftcnn_n2b4_by_hand():
    w = torch.tensor([0.3, -0.7, 1.0, 0.05, 0.0])
    # 0.3 -> 1/4 + 1/16; -0.7 -> -1/2 - 1/4 (0.2 -> 1/4); 0.05 -> 1/16 - 1/64 (scale = max|w| = 1)
    assert shiftcnn_quantize(w, 2, 4).tolist() == [0.3125, -0.75, 1.0, 0.046875, 0.0]
    codes, s = shiftcnn_codes(w, 2, 4)
    levels = pot_levels(4)
    assert levels[codes].tolist() == [[0.25, 0.0625], [-0.5, -0.25], [1.0, 0.0], [0.0625, -0.015625], [0.0, 0.0]]
    assert s.item() == 1.0


def test_shiftcnn_default_scale_is_max_abs():
    w = torch.tensor([0.6, -3.0])
    _, s = shiftcnn_codes(w, 2, 4)
    assert s.item() == 3.0
    assert shiftcnn_quantize(w, 2, 4)[1].item() == -3.0


@settings(max_examples=100, deadline=None)
@given(w=vectors, bits=bits_st, n_terms=st.integers(1, 4))
def test_shiftcnn_codes_reproduce_values_exactly(w, bits, n_terms):
    codes, s = shiftcnn_codes(w, n_terms, bits)
    assert codes.shape == (*w.shape, n_terms) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 2
    q = shiftcnn_quantize(w, n_terms, bits)
    assert torch.equal(s * pot_levels(bits)[codes].sum(dim=-1), q)
    assert bool((q.abs() <= s).all())


@settings(max_examples=100, deadline=None)
@given(w=vectors, bits=st.integers(2, 6))
def test_shiftcnn_error_is_non_increasing_in_n_terms(w, bits):
    errs = [(shiftcnn_quantize(w, n, bits) - w).abs() for n in range(1, 5)]
    for coarse, fine in zip(errs, errs[1:], strict=False):
        assert bool((fine <= coarse).all())


def test_shiftcnn_mse_strictly_decreases_on_gaussian_weights():
    w = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    mse = [float(((shiftcnn_quantize(w, n, 4) - w) ** 2).mean()) for n in (1, 2, 3)]
    assert mse[0] > mse[1] > mse[2]
    assert mse[1] < mse[0] / 10  # each extra term is worth far more than one level step


@settings(max_examples=100, deadline=None)
@given(x=st.lists(unit_values, min_size=1, max_size=16), bits=st.sampled_from([2, 3, 4, 5]))
def test_shiftcnn_one_term_equals_pot_quantize(x, bits):
    w = torch.tensor(x)
    assert torch.equal(shiftcnn_quantize(w, 1, bits, scale=1.0), pot_quantize(w, bits, scale=1.0))


@settings(max_examples=100, deadline=None)
@given(w=vectors, bits=bits_st, n_terms=st.integers(1, 4))
def test_shiftcnn_is_idempotent(w, bits, n_terms):
    q = shiftcnn_quantize(w, n_terms, bits)
    assert torch.equal(shiftcnn_quantize(q, n_terms, bits), q)


def test_shiftcnn_gradient_is_ste_clipped_at_scale():
    w = torch.tensor([0.3, -2.0, 0.9], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0])
    (gw,) = torch.autograd.grad(shiftcnn_quantize(w, 2, 4, scale=1.0), w, g)
    assert gw.tolist() == [1.0, 0.0, 3.0]


# --------------------------------------------------------------------------- k-means


def gaussian(n=2000, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_kmeans_by_hand():
    cb, idx = kmeans_codebook(torch.tensor([0.0, 0.1, 0.2, 1.0, 1.1, 3.0]), bits=1)
    assert cb.tolist() == pytest.approx([0.48, 3.0])
    assert idx.tolist() == [0, 0, 0, 0, 0, 1]


def test_kmeans_empty_clusters_keep_their_linear_init():
    w = torch.tensor([0.0, 0.0, 9.0, 9.0])
    cb, idx = kmeans_codebook(w, bits=2)  # init (0, 3, 6, 9): the middle two stay empty
    assert cb.tolist() == [0.0, 3.0, 6.0, 9.0]
    assert idx.tolist() == [0, 0, 3, 3]


def test_kmeans_constant_tensor():
    cb, idx = kmeans_codebook(torch.full((5,), 0.5), bits=2)
    assert cb.tolist() == [0.5] * 4
    assert torch.equal(cb[idx], torch.full((5,), 0.5))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_is_a_fixed_point(bits):
    w = gaussian().reshape(40, 50)
    cb, idx = kmeans_codebook(w, bits, iters=300)
    cb2, idx2 = kmeans_codebook(w, bits, iters=1, init=cb)
    assert torch.equal(cb2, cb) and torch.equal(idx2, idx)
    # and a fixed point of Lloyd's update, checked independently: every centroid is its cluster mean
    for k in range(2**bits):
        members = w.reshape(-1)[idx.reshape(-1) == k]
        if members.numel():
            assert cb[k].item() == pytest.approx(members.double().mean().item(), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_mse_beats_uniform_grid_on_gaussian(bits):
    w = gaussian(seed=bits)
    cb, idx = kmeans_codebook(w, bits)
    grid = torch.linspace(w.min().item(), w.max().item(), 2**bits)
    mse_kmeans = float(((cb[idx] - w) ** 2).mean())
    mse_grid = float(((codebook_quantize(w, grid) - w) ** 2).mean())
    assert mse_kmeans < mse_grid


def test_kmeans_is_deterministic_and_indices_match_codebook_quantize():
    w = gaussian(3000, seed=5).reshape(30, 100)
    cb, idx = kmeans_codebook(w, 3)
    cb2, idx2 = kmeans_codebook(w.clone(), 3)
    assert torch.equal(cb, cb2) and torch.equal(idx, idx2)
    assert idx.shape == w.shape and idx.dtype == torch.int64
    assert bool((cb[1:] >= cb[:-1]).all())
    assert torch.equal(codebook_quantize(w, cb), cb[idx])
    assert torch.equal(codebook_indices(w, cb), idx)


def test_codebook_quantize_nearest_with_ties_to_smaller_and_any_order():
    cb = torch.tensor([1.0, -1.0, 0.0])
    w = torch.tensor([0.5, -0.5, 0.51, -0.51, 7.0, -0.0])
    assert codebook_quantize(w, cb).tolist() == [0.0, -1.0, 1.0, -1.0, 1.0, 0.0]
    assert codebook_indices(w, cb).tolist() == [2, 1, 0, 1, 0, 2]


@settings(max_examples=100, deadline=None)
@given(w=vectors, cb=st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=1, max_size=9).map(torch.tensor))
def test_codebook_quantize_picks_a_nearest_entry_and_is_idempotent(w, cb):
    q = codebook_quantize(w, cb)
    dist = (w[:, None] - cb[None, :]).abs()
    assert_close((q - w).abs(), dist.min(dim=1).values, rtol=0, atol=1e-6)
    assert set(q.tolist()) <= set(cb.tolist())
    assert torch.equal(codebook_quantize(q, cb), q)


def test_codebook_quantize_gradients_by_hand():
    w = torch.tensor([0.1, 0.4, 0.6, 2.0, -3.0], requires_grad=True)
    cb = torch.tensor([0.0, 1.0, -1.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    gw, gc = torch.autograd.grad(codebook_quantize(w, cb), (w, cb), g)
    assert torch.equal(gw, g)  # straight-through
    assert gc.tolist() == [1.0 + 2.0, 3.0 + 4.0, 5.0]  # summed per shared weight


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bits", [1, 9, 0, 2.0, True])
def test_pot_bits_out_of_range(bits):
    with pytest.raises(ConfigError, match=rf"pot_quantize supports bits in 2\.\.8, got {bits!r}"):
        pot_quantize(torch.randn(4), bits)
    with pytest.raises(ConfigError, match=r"pot_levels supports bits in 2\.\.8"):
        pot_levels(bits)


@pytest.mark.parametrize("bits", [1, 9])
def test_shiftcnn_bits_out_of_range(bits):
    with pytest.raises(ConfigError, match=rf"shiftcnn_codes supports bits in 2\.\.8, got {bits}"):
        shiftcnn_quantize(torch.randn(4), 2, bits)


@pytest.mark.parametrize("n_terms", [0, 9, -1, 1.5])
def test_shiftcnn_n_terms_out_of_range(n_terms):
    with pytest.raises(ConfigError, match=rf"shiftcnn_codes supports n_terms in 1\.\.8, got {n_terms!r}"):
        shiftcnn_quantize(torch.randn(4), n_terms, 4)


@pytest.mark.parametrize("bits", [0, 9])
def test_kmeans_bits_out_of_range(bits):
    with pytest.raises(ConfigError, match=rf"kmeans_codebook supports bits in 1\.\.8, got {bits}"):
        kmeans_codebook(torch.randn(4), bits)


@pytest.mark.parametrize("iters", [0, -3, 2.5])
def test_kmeans_iters_must_be_positive_int(iters):
    with pytest.raises(ConfigError, match=r"iters must be an int >= 1"):
        kmeans_codebook(torch.randn(4), 2, iters=iters)


def test_kmeans_rejects_bad_init_empty_and_non_finite():
    with pytest.raises(ConfigError, match=r"init has 3 centroids; 2\*\*bits = 4"):
        kmeans_codebook(torch.randn(8), 2, init=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ConfigError, match="w is empty"):
        kmeans_codebook(torch.zeros(0), 2)
    with pytest.raises(ConfigError, match="NaN or inf"):
        kmeans_codebook(torch.tensor([0.0, float("nan")]), 2)


@pytest.mark.parametrize("fn", [pot_quantize, shiftcnn_quantize], ids=lambda f: f.__name__)
@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), torch.tensor([1.0, -1.0])])
def test_scale_must_be_positive(fn, scale):
    args = (4,) if fn is pot_quantize else (2, 4)
    with pytest.raises(ConfigError, match=r"scale must be finite and > 0"):
        fn(torch.randn(2), *args, scale=scale)


def test_scale_must_broadcast():
    with pytest.raises(ConfigError, match=r"scale of shape \(3,\) does not broadcast to w of shape \(2,\)"):
        pot_quantize(torch.randn(2), 4, scale=torch.ones(3))
    with pytest.raises(ConfigError, match="scale must be None, a positive number or a float tensor"):
        shiftcnn_quantize(torch.randn(2), 2, 4, scale="1")


@pytest.mark.parametrize(
    "call",
    [
        lambda w: pot_quantize(w, 4),
        lambda w: pot_scale(w),
        lambda w: shiftcnn_quantize(w, 2, 4),
        lambda w: kmeans_codebook(w, 2),
        lambda w: codebook_quantize(w, torch.tensor([0.0, 1.0])),
    ],
    ids=["pot_quantize", "pot_scale", "shiftcnn", "kmeans", "codebook_quantize"],
)
def test_non_float_weights_are_config_error(call):
    with pytest.raises(ConfigError, match="must be a floating-point tensor, got dtype torch.int64"):
        call(torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("cb", [torch.tensor([[0.0, 1.0]]), torch.tensor([0, 1]), torch.zeros(0), [0.0, 1.0]], ids=["2d", "int", "empty", "list"])
def test_codebook_must_be_nonempty_1d_float(cb):
    with pytest.raises(ConfigError, match="codebook must be a non-empty 1-d float tensor"):
        codebook_quantize(torch.randn(3), cb)


def test_codebook_must_be_finite():
    with pytest.raises(ConfigError, match="non-finite"):
        codebook_quantize(torch.randn(3), torch.tensor([0.0, float("inf")]))

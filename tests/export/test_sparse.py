"""Relative-index sparse encoding (Deep Compression): exact inverse, gaps within index_bits, fillers as in the paper."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import ConfigError
from lowbit.export.checkpoint import CheckpointError
from lowbit.export.sparse import relative_index_decode, relative_index_encode


def reference_encode(symbols, index_bits, zero=0):
    """Element-by-element encoder, written from the paper's description (independent of the vectorised one)."""
    max_gap = 2**index_bits - 1
    gaps, values, run = [], [], 0
    for x in symbols:
        if x == zero:
            run += 1
            if run > max_gap:  # this zero is the (2^b)-th since the last entry: store it as a filler
                gaps.append(max_gap)
                values.append(zero)
                run = 0
        else:
            gaps.append(run)
            values.append(int(x))
            run = 0
    return gaps, values


def sparse_symbols(draw_seed, n, density, alphabet):
    rng = np.random.default_rng(draw_seed)
    return np.where(rng.random(n) < density, rng.integers(1, alphabet, n), 0)


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(0, 400),
    density=st.floats(0.0, 1.0),
    index_bits=st.integers(1, 8),
    zero=st.integers(-3, 3),
)
def test_round_trip_and_parity_with_reference(seed, n, density, index_bits, zero):
    x = sparse_symbols(seed, n, density, 6) + zero  # pruned positions hold `zero`
    gaps, values = relative_index_encode(x, index_bits=index_bits, zero=zero)
    assert gaps.dtype == values.dtype == np.int64 and gaps.shape == values.shape
    assert gaps.min(initial=0) >= 0 and gaps.max(initial=0) <= 2**index_bits - 1
    ref_gaps, ref_values = reference_encode(x.tolist(), index_bits, zero)
    # the reference also stores fillers inside a trailing run of zeros; those carry no information
    keep = len(ref_gaps)
    while keep and ref_values[keep - 1] == zero:
        keep -= 1
    assert gaps.tolist() == ref_gaps[:keep] and values.tolist() == ref_values[:keep]
    assert relative_index_decode(gaps, values, length=n, zero=zero).tolist() == x.tolist()


@settings(max_examples=60, deadline=None)
@given(runs=st.lists(st.integers(0, 70), min_size=1, max_size=20), index_bits=st.integers(1, 6))
def test_fillers_per_run_are_floor_of_run_over_period(runs, index_bits):
    # runs of zeros, each followed by a kept entry of value 1
    x = np.concatenate([np.r_[np.zeros(r, dtype=np.int64), 1] for r in runs])
    gaps, values = relative_index_encode(x, index_bits=index_bits)
    period = 2**index_bits
    assert values.size == len(runs) + sum(r // period for r in runs)
    assert np.count_nonzero(values == 0) == sum(r // period for r in runs)
    assert np.all(gaps[values == 0] == period - 1)
    assert gaps[values == 1].tolist() == [r % period for r in runs]


def test_paper_example_three_bit_gaps():
    # 3-bit gaps skip at most 7 zeros: 7 zeros fit, 8 zeros need one filler (stored at the 8th), 16 need two
    x = np.zeros(40, dtype=np.int64)
    x[[7, 16, 33]] = [4, 2, 9]  # runs of 7, 8 and 16 zeros
    gaps, values = relative_index_encode(x, index_bits=3)
    assert gaps.tolist() == [7, 7, 0, 7, 7, 0]
    assert values.tolist() == [4, 0, 2, 0, 0, 9]
    positions = np.cumsum(gaps + 1) - 1
    assert positions.tolist() == [7, 15, 16, 24, 32, 33]  # fillers sit on pruned positions
    assert relative_index_decode(gaps, values, length=40).tolist() == x.tolist()


@pytest.mark.parametrize("x", [[], [0, 0, 0], np.zeros(0, dtype=np.int8)])
def test_nothing_kept_encodes_to_nothing(x):
    gaps, values = relative_index_encode(x, index_bits=4)
    assert gaps.size == values.size == 0
    assert relative_index_decode(gaps, values, length=len(x)).tolist() == [0] * len(x)


def test_trailing_zeros_are_not_stored_and_refilled():
    x = np.array([3] + [0] * 100)
    gaps, values = relative_index_encode(x, index_bits=2)
    assert (gaps.tolist(), values.tolist()) == ([0], [3])
    assert relative_index_decode(gaps, values, length=101).tolist() == x.tolist()


def test_dense_input_has_zero_gaps():
    gaps, values = relative_index_encode(np.arange(1, 9), index_bits=1)
    assert gaps.tolist() == [0] * 8 and values.tolist() == list(range(1, 9))


def test_multidimensional_input_is_flattened_and_not_modified():
    x = np.array([[0, 2], [0, 0], [5, 0]], dtype=np.int16)
    before = x.copy()
    gaps, values = relative_index_encode(x, index_bits=4)
    assert (gaps.tolist(), values.tolist()) == ([1, 2], [2, 5])
    assert np.array_equal(x, before)
    assert relative_index_decode(gaps, values, length=x.size).reshape(x.shape).tolist() == x.tolist()


def test_large_sparse_layer_round_trips():
    x = sparse_symbols(0, 200_000, 0.08, 32)  # ~92 % pruned, as in the paper's conv layers
    gaps, values = relative_index_encode(x, index_bits=5)
    assert gaps.max() <= 31
    assert np.array_equal(relative_index_decode(gaps, values, length=x.size), x)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("index_bits", [0, -1, 33, True, 3.0])
def test_invalid_index_bits_is_refused(index_bits):
    with pytest.raises(ConfigError, match="index_bits"):
        relative_index_encode(np.array([0, 1]), index_bits=index_bits)


@pytest.mark.parametrize("symbols", [np.array([0.0, 1.0]), np.array([True, False]), np.zeros(0)])
def test_non_integer_symbols_are_refused(symbols):
    with pytest.raises(ConfigError, match="integer array"):
        relative_index_encode(symbols, index_bits=3)


def test_invalid_zero_is_refused():
    with pytest.raises(ConfigError, match="zero"):
        relative_index_encode(np.array([0, 1]), index_bits=3, zero=0.5)


def test_mismatched_arrays_are_refused():
    with pytest.raises(CheckpointError, match="3 gaps but 2 values"):
        relative_index_decode(np.array([0, 1, 2]), np.array([1, 2]), length=10)


def test_gaps_past_length_are_refused():
    with pytest.raises(CheckpointError, match="reach position 6, past length=6"):
        relative_index_decode(np.array([2, 3]), np.array([1, 2]), length=6)


def test_negative_gap_is_refused():
    with pytest.raises(CheckpointError, match="negative gap"):
        relative_index_decode(np.array([2, -1]), np.array([1, 2]), length=6)


@pytest.mark.parametrize("length", [-1, 2.0, None])
def test_invalid_length_is_refused(length):
    with pytest.raises(ConfigError, match="length"):
        relative_index_decode(np.array([0]), np.array([1]), length=length)


def test_decode_rejects_float_arrays():
    with pytest.raises(ConfigError, match="gaps must be an integer array"):
        relative_index_decode(np.array([0.0]), np.array([1]), length=3)

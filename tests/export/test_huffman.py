"""Canonical Huffman coding: round trips, optimality against independent references, the byte format
and its refusal of corrupt files."""

import heapq
import itertools
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import ConfigError
from lowbit.export.checkpoint import CheckpointError
from lowbit.export.huffman import HuffmanStream, canonical_codes, entropy_bits, huffman_decode, huffman_encode, huffman_lengths


def fibonacci(n):
    f = [1, 1]
    while len(f) < n:
        f.append(f[-1] + f[-2])
    return np.array(f[:n], dtype=np.int64)


def reference_huffman_cost(counts):
    """Payload bits of a plain Huffman code: the sum of all merged weights (heapq, independent of lowbit)."""
    heap = [int(c) for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


def reference_bits(symbols, lengths):
    codes = canonical_codes(np.asarray(lengths))
    return "".join(format(int(codes[s]), f"0{int(lengths[s])}b") for s in symbols)


def bits_to_bytes(bits):
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def kraft(lengths):
    return sum(Fraction(1, 2 ** int(n)) for n in lengths if n > 0)


def raw_stream(lengths, count, nbits, payload, magic=b"LBHF", version=1):
    """The documented byte layout, built by hand with a valid CRC."""
    body = struct.pack("<4sBIQQ", magic, version, len(lengths), count, nbits) + bytes(bytearray(lengths)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


# ---------------------------------------------------------------- round trips


@settings(max_examples=80, deadline=None)
@given(
    symbols=st.lists(st.integers(0, 40), max_size=400),
    extra=st.integers(0, 5),
    max_length=st.integers(6, 32),
)
def test_round_trip_through_bytes(symbols, extra, max_length):
    alphabet = (max(symbols) + 1 if symbols else 0) + extra
    stream = huffman_encode(symbols, alphabet=alphabet, max_length=max_length)
    data = stream.to_bytes()
    assert stream.size_bytes == len(data)
    restored = HuffmanStream.from_bytes(data)
    assert restored == stream and hash(restored) == hash(stream)
    decoded = huffman_decode(restored)
    assert decoded.dtype == np.int64 and decoded.tolist() == symbols
    assert restored.lengths.size == alphabet and restored.count == len(symbols)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 3000), alphabet=st.integers(1, 300), p=st.floats(0.05, 0.9))
def test_payload_equals_bit_by_bit_reference(seed, n, alphabet, p):
    symbols = np.minimum(np.random.default_rng(seed).geometric(p, n) - 1, alphabet - 1)
    stream = huffman_encode(symbols, alphabet=alphabet)
    bits = reference_bits(symbols, stream.lengths)
    assert stream.nbits == len(bits)
    assert stream.payload == bits_to_bytes(bits)


def test_decodes_32_bit_codes_packed_by_reference():
    # a complete code with every length 1..32 (two codes of 32 bits): exercises codes that straddle
    # 64-bit words and decode chunks, independent of the encoder's choice of lengths
    lengths = np.array(list(range(1, 33)) + [32], dtype=np.uint8)
    assert kraft(lengths) == 1
    rng = np.random.default_rng(0)
    symbols = rng.integers(0, lengths.size, 6000)
    bits = reference_bits(symbols, lengths)
    stream = HuffmanStream(lengths=lengths, count=symbols.size, nbits=len(bits), payload=bits_to_bytes(bits))
    assert huffman_decode(stream).tolist() == symbols.tolist()


def test_round_trip_200k_symbols():
    # decode sanity on a stream spanning many decode chunks (no timing assertion: see the module's benchmark)
    rng = np.random.default_rng(1)
    symbols = np.minimum(rng.zipf(1.4, 200_000) - 1, 1023)
    stream = huffman_encode(symbols)
    assert np.array_equal(huffman_decode(HuffmanStream.from_bytes(stream.to_bytes())), symbols)


@pytest.mark.parametrize("symbols", [[], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8)])
@pytest.mark.parametrize("alphabet", [None, 0, 7])
def test_empty_stream_round_trips(symbols, alphabet):
    stream = huffman_encode(symbols, alphabet=alphabet)
    assert (stream.count, stream.nbits, stream.payload) == (0, 0, b"")
    assert not stream.lengths.any()
    out = huffman_decode(HuffmanStream.from_bytes(stream.to_bytes()))
    assert out.dtype == np.int64 and out.size == 0


def test_single_symbol_takes_one_bit_each():
    stream = huffman_encode(np.full(13, 4), alphabet=6)
    assert stream.lengths.tolist() == [0, 0, 0, 0, 1, 0]
    assert stream.nbits == 13 and stream.payload == b"\x00\x00"
    assert huffman_decode(stream).tolist() == [4] * 13


def test_multidimensional_input_is_flattened_in_c_order():
    x = np.arange(12).reshape(3, 4) % 5
    assert huffman_decode(huffman_encode(x)).tolist() == x.reshape(-1).tolist()


def test_byte_layout_is_the_documented_one():
    stream = huffman_encode([0, 0, 1, 2], alphabet=4)
    assert stream.lengths.tolist() == [1, 2, 2, 0]
    # codes 0, 10, 11 -> 0 0 10 11 -> 0b00101100
    assert stream.to_bytes() == raw_stream([1, 2, 2, 0], 4, 6, bytes([0b00101100]))


# ------------------------------------------------------------ code properties


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(0, 10_000), min_size=1, max_size=60))
def test_lengths_have_the_huffman_cost(counts):
    counts = np.array(counts)
    lengths = huffman_lengths(counts, max_length=32)
    assert lengths.dtype == np.uint8
    assert np.array_equal(lengths > 0, counts > 0)
    if counts.any():
        assert int((counts * lengths).sum()) == reference_huffman_cost(counts)


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(1, 10_000), min_size=2, max_size=60), max_length=st.integers(6, 24))
def test_used_lengths_form_a_complete_code(counts, max_length):
    lengths = huffman_lengths(np.array(counts), max_length=max_length)
    assert kraft(lengths) == 1
    assert lengths.max() <= max_length


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 1000), min_size=2, max_size=6), slack=st.integers(0, 2))
def test_length_limited_code_is_optimal_by_brute_force(counts, slack):
    n = len(counts)
    limit = max(1, (n - 1).bit_length()) + slack  # smallest feasible limit, and a little above it
    best = min(
        sum(c * n_bits for c, n_bits in zip(counts, ls, strict=True))
        for ls in itertools.product(range(1, limit + 1), repeat=n)
        if sum(1 << (limit - n_bits) for n_bits in ls) <= 1 << limit  # Kraft, in integers
    )
    lengths = huffman_lengths(np.array(counts), max_length=limit)
    assert lengths.max() <= limit
    assert int((np.array(counts) * lengths).sum()) == best


def test_fibonacci_counts_are_limited_to_max_length():
    counts = fibonacci(40)  # a plain Huffman tree for these is 39 levels deep
    assert huffman_lengths(counts, max_length=32).max() == 32
    lengths = huffman_lengths(counts, max_length=24)
    assert lengths.max() == 24
    assert kraft(lengths) == 1
    cost = int((counts * lengths).sum())
    assert cost > reference_huffman_cost(counts)  # the limit binds, so it costs something ...
    assert cost < 1.01 * reference_huffman_cost(counts)  # ... but little


def test_fibonacci_stream_round_trips_at_the_length_limit():
    counts = fibonacci(22)  # 46367 symbols, plain Huffman depth 21
    symbols = np.random.default_rng(2).permutation(np.repeat(np.arange(22), counts))
    stream = huffman_encode(symbols, max_length=12)
    assert stream.lengths.max() == 12
    assert np.array_equal(huffman_decode(stream), symbols)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 500), min_size=1, max_size=40))
def test_canonical_codes_are_prefix_free_and_ordered(counts):
    lengths = huffman_lengths(np.array(counts))
    codes = canonical_codes(lengths)
    words = {s: format(int(codes[s]), f"0{int(lengths[s])}b") for s in np.flatnonzero(lengths)}
    assert all(not b.startswith(a) for a, b in itertools.permutations(words.values(), 2))
    # canonical: in (length, symbol) order the left-aligned codes increase
    order = sorted(words, key=lambda s: (lengths[s], s))
    aligned = [int(words[s].ljust(32, "0"), 2) for s in order]
    assert aligned == sorted(aligned) and len(set(aligned)) == len(aligned)


@settings(max_examples=60, deadline=None)
@given(symbols=st.lists(st.integers(0, 30), min_size=1, max_size=500))
def test_payload_is_within_one_bit_per_symbol_of_the_entropy(symbols):
    stream = huffman_encode(symbols)
    h = entropy_bits(symbols)
    assert h - 1e-6 <= stream.nbits <= h + len(symbols) + 1e-6


def test_entropy_bits_matches_the_formula():
    assert entropy_bits([0, 1, 2, 3]) == 8.0
    assert entropy_bits(np.array([7] * 10)) == 0.0
    assert entropy_bits([0, 0, 0, 1]) == pytest.approx(-3 * np.log2(0.75) - np.log2(0.25))


# ------------------------------------------------------------ the value object


def test_stream_copies_and_freezes_lengths():
    lengths = np.array([1, 1, 0], dtype=np.int64)
    stream = HuffmanStream(lengths=lengths, count=2, nbits=2, payload=bytearray(b"\x40"))
    lengths[0] = 9
    assert stream.lengths.tolist() == [1, 1, 0] and stream.lengths.dtype == np.uint8
    assert isinstance(stream.payload, bytes)
    with pytest.raises(ValueError):
        stream.lengths[0] = 2
    assert huffman_decode(stream).tolist() == [0, 1]
    assert "count=2" in repr(stream) and "payload" not in repr(stream)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lengths": [[1, 1]], "count": 0, "nbits": 0}, "1-D"),
        ({"lengths": [1.0, 1.0], "count": 0, "nbits": 0}, "1-D"),
        ({"lengths": [300], "count": 0, "nbits": 0}, "0..255"),
        ({"lengths": [1], "count": -1, "nbits": 0}, "count"),
        ({"lengths": [1], "count": 0, "nbits": 1.5}, "nbits"),
    ],
)
def test_stream_rejects_invalid_fields(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        HuffmanStream(payload=b"", **kwargs)


# ----------------------------------------------------------- corrupt files


@pytest.fixture
def good():
    symbols = np.random.default_rng(3).integers(0, 9, 500)
    return symbols, huffman_encode(symbols, alphabet=10).to_bytes()


def test_flipped_payload_byte_fails_the_crc(good):
    _, data = good
    bad = bytearray(data)
    bad[len(bad) - 10] ^= 0x10
    with pytest.raises(CheckpointError, match="CRC32 mismatch.*re-save"):
        HuffmanStream.from_bytes(bytes(bad))


def test_flipped_length_byte_fails_the_crc(good):
    _, data = good
    bad = bytearray(data)
    bad[25] ^= 0x01
    with pytest.raises(CheckpointError, match="CRC32"):
        HuffmanStream.from_bytes(bytes(bad))


@pytest.mark.parametrize("cut", [0, 3, 20, 28, 40, -1])
def test_truncated_bytes_are_refused(good, cut):
    _, data = good
    with pytest.raises(CheckpointError, match="truncated"):
        HuffmanStream.from_bytes(data[:cut])


def test_trailing_bytes_are_refused(good):
    _, data = good
    with pytest.raises(CheckpointError, match="extra bytes"):
        HuffmanStream.from_bytes(data + b"\x00")


def test_bad_magic_is_refused(good):
    _, data = good
    with pytest.raises(CheckpointError, match="magic"):
        HuffmanStream.from_bytes(b"PK\x03\x04" + data[4:])


@pytest.mark.parametrize("version, match", [(2, "upgrade lowbit"), (0, "does not exist")])
def test_unknown_version_is_refused(version, match):
    with pytest.raises(CheckpointError, match=match):
        HuffmanStream.from_bytes(raw_stream([1, 1], 1, 1, b"\x00", version=version))


def test_lengths_over_kraft_are_refused():
    data = raw_stream([1, 1, 1], 3, 3, b"\x00")  # three 1-bit codes: no prefix code
    with pytest.raises(CheckpointError, match="Kraft sum 1.5 > 1"):
        HuffmanStream.from_bytes(data)
    with pytest.raises(CheckpointError, match="Kraft"):
        huffman_decode(HuffmanStream(lengths=[1, 1, 1], count=3, nbits=3, payload=b"\x00"))


def test_lengths_over_32_bits_are_refused():
    with pytest.raises(CheckpointError, match="exceeds the supported maximum of 32"):
        HuffmanStream.from_bytes(raw_stream([1, 40], 1, 1, b"\x00"))


def test_incomplete_code_hitting_an_unused_pattern_is_refused():
    # lengths 2, 2, 2 leave the pattern "11" unused; the payload "00 01 11" hits it at bit 4
    stream = HuffmanStream.from_bytes(raw_stream([2, 2, 2], 3, 6, bytes([0b00011100])))
    with pytest.raises(CheckpointError, match="bit 4 .*no code.*incomplete"):
        huffman_decode(stream)
    # a single-symbol code is "0": a 1 bit is no code
    with pytest.raises(CheckpointError, match="incomplete"):
        huffman_decode(HuffmanStream(lengths=[0, 1], count=2, nbits=2, payload=bytes([0b01000000])))


def test_payload_shorter_than_nbits_is_refused():
    stream = huffman_encode(np.arange(64) % 7)
    short = HuffmanStream(lengths=stream.lengths, count=stream.count, nbits=stream.nbits, payload=stream.payload[:-1])
    with pytest.raises(CheckpointError, match="truncated"):
        huffman_decode(short)


@pytest.mark.parametrize("delta", [-1, 1])
def test_count_mismatch_is_refused(good, delta):
    symbols, data = good
    stream = HuffmanStream.from_bytes(data)
    wrong = HuffmanStream.from_bytes(raw_stream(stream.lengths, stream.count + delta, stream.nbits, stream.payload))
    with pytest.raises(CheckpointError, match="500 symbols|more than the 499"):
        huffman_decode(wrong)


def test_code_running_past_nbits_is_refused():
    # codes 0 / 10 / 11; nbits=3 cuts "0 0 10" inside its last code
    stream = HuffmanStream(lengths=[1, 2, 2], count=3, nbits=3, payload=bytes([0b00100000]))
    with pytest.raises(CheckpointError, match="runs past nbits=3"):
        huffman_decode(stream)


def test_count_without_bits_is_refused():
    with pytest.raises(CheckpointError, match="3 symbols in 0 bits"):
        huffman_decode(HuffmanStream(lengths=[1, 1], count=3, nbits=0, payload=b""))


def test_count_without_code_lengths_is_refused():
    with pytest.raises(CheckpointError, match="no symbol has a code length"):
        huffman_decode(HuffmanStream(lengths=[0, 0], count=1, nbits=1, payload=b"\x00"))


def test_corrupt_errors_are_value_errors(good):
    with pytest.raises(ValueError):
        HuffmanStream.from_bytes(b"garbage")


# --------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    "symbols, alphabet, match",
    [
        ([0, -1, 2], None, "non-negative"),
        ([0, 5], 5, "outside the alphabet 0..4"),
        (np.array([0.0, 1.0]), None, "integer array"),
        (np.array([True, False]), None, "integer array"),
        (np.zeros(0), None, "integer array"),
        ([0, 1], -1, "alphabet"),
        ([0, 1], 2.0, "alphabet"),
    ],
)
def test_encode_rejects_invalid_symbols(symbols, alphabet, match):
    with pytest.raises(ConfigError, match=match):
        huffman_encode(symbols, alphabet=alphabet)


@pytest.mark.parametrize("max_length", [0, -3, 33, True, 2.5])
def test_invalid_max_length_is_refused(max_length):
    with pytest.raises(ConfigError, match="max_length"):
        huffman_lengths(np.array([1, 2, 3]), max_length=max_length)
    with pytest.raises(ConfigError, match="max_length"):
        huffman_encode([0, 1, 2], max_length=max_length)


def test_too_many_symbols_for_the_length_limit():
    with pytest.raises(ConfigError, match="raise max_length to 2"):
        huffman_lengths(np.array([1, 1, 1]), max_length=1)


@pytest.mark.parametrize("counts, match", [(np.ones((2, 2), dtype=int), "1-D"), (np.array([1.5, 2.0]), "integer"), (np.array([3, -1]), "non-negative")])
def test_lengths_reject_invalid_counts(counts, match):
    with pytest.raises(ConfigError, match=match):
        huffman_lengths(counts)


def test_canonical_codes_reject_non_prefix_lengths():
    with pytest.raises(ConfigError, match="Kraft"):
        canonical_codes(np.array([1, 1, 2]))


def test_decode_rejects_non_streams():
    with pytest.raises(ConfigError, match="HuffmanStream.from_bytes"):
        huffman_decode(b"LBHF")


def test_encode_does_not_modify_its_input():
    symbols = np.array([3, 1, 3, 0], dtype=np.int32)
    huffman_encode(symbols)
    assert symbols.tolist() == [3, 1, 3, 0] and symbols.dtype == np.int32

"""Canonical Huffman coding of integer symbol streams — the last stage of Deep Compression
(Han et al. 2016: prune -> k-means weight sharing -> Huffman coding of the codebook indices and gaps).

A stream of ``N`` symbols over the alphabet ``{0, ..., A-1}`` with counts ``n_s`` gets one code
length ``l_s`` per symbol, chosen to minimise the payload ``sum_s n_s l_s`` subject to the Kraft
inequality ``sum_s 2^-l_s <= 1`` and ``l_s <= max_length`` (package-merge, Larmore & Hirschberg 1990:
optimal among all length-limited prefix codes; with no binding limit it equals plain Huffman).
Codes are *canonical*: symbols sorted by ``(l_s, s)`` receive consecutive integers, the running code
shifted left whenever the length grows (as in DEFLATE), so the lengths alone define the code. The payload is
the codes concatenated MSB-first, and it is never shorter than the entropy
``H = -sum_s n_s log2(n_s / N)`` nor (without a binding limit) longer than ``H + N`` bits.

Serialized layout (:meth:`HuffmanStream.to_bytes`), integers little-endian:

* ``b"LBHF"`` magic (4 bytes), format version (uint8, ``1``), alphabet size ``A`` (uint32),
  ``count`` symbols (uint64), ``nbits`` payload bits (uint64);
* ``A`` code lengths (uint8 each, 0 = symbol unused) — the whole code book;
* the payload, ``ceil(nbits / 8)`` bytes: codes MSB-first, the last byte zero-padded;
* CRC32 (uint32) of every byte before it.

Example:
    >>> import numpy as np
    >>> s = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    >>> stream = huffman_encode(s)
    >>> stream.lengths.tolist(), canonical_codes(stream.lengths).tolist(), stream.nbits
    ([1, 2, 3, 3], [0, 2, 6, 7], 14)
    >>> entropy_bits(s)
    14.0
    >>> restored = huffman_decode(HuffmanStream.from_bytes(stream.to_bytes()))
    >>> restored.tolist()
    [0, 0, 0, 0, 1, 1, 2, 3]
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .checkpoint import CheckpointError

MAGIC = b"LBHF"
FORMAT_VERSION = 1
MAX_CODE_LENGTH = 32  # decoder windows read 57 bits at any bit offset; 32 leaves room and fits uint64 codes
_HEADER = struct.Struct("<4sBIQQ")  # magic, version, alphabet, count, nbits
_CRC = struct.Struct("<I")
_DECODE_CHUNK_BITS = 1 << 16  # bit positions decoded speculatively per chunk (bounds memory, log2 doubling rounds)
_FIX = "re-save the file from the original model, or restore an intact copy"


def _as_symbols(symbols: np.ndarray | Sequence[int], what: str = "symbols") -> np.ndarray:
    """Flat ``int64`` array (view or copy) of a non-negative integer stream; ``ConfigError`` otherwise."""
    given = symbols
    arr = np.asarray(symbols)
    if arr.size == 0 and not isinstance(given, np.ndarray):
        return np.zeros(0, dtype=np.int64)  # np.asarray([]) is float64; an empty list is a valid empty stream
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"{what} must be an integer array, got dtype {arr.dtype}; convert with .astype(np.int64) (e.g. codebook indices)")
    arr = arr.reshape(-1).astype(np.int64, copy=False)
    if arr.size and int(arr.min()) < 0:
        raise ConfigError(f"{what} must be non-negative, found {int(arr.min())}; shift them to start at 0 (e.g. q - qmin)")
    return arr


def _check_max_length(max_length: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int | np.integer) or not 1 <= max_length <= MAX_CODE_LENGTH:
        raise ConfigError(f"max_length must be an integer in 1..{MAX_CODE_LENGTH}, got {max_length!r}")


def huffman_lengths(counts: np.ndarray, max_length: int = 24) -> np.ndarray:
    """Optimal length-limited prefix-code lengths for symbol ``counts`` (package-merge).

    Minimises ``sum_s counts[s] * l[s]`` subject to ``sum_{s: counts[s] > 0} 2^-l[s] = 1`` and
    ``1 <= l[s] <= max_length`` for every used symbol. When the plain Huffman tree is no deeper than
    ``max_length`` the result has the Huffman cost; otherwise it is the cheapest code that respects the
    limit. Ties are broken by symbol index, so the result is deterministic.

    Package-merge: the ``n`` used symbols become "coins" of weight ``counts[s]`` at every depth
    ``1..L``; at each depth from ``L`` up, adjacent pairs of the sorted list are packaged and merged
    with the coins of the depth above; the ``2n - 2`` lightest items at depth 1 are kept and each
    symbol's length is the number of depths at which it is kept. ``O(n L log n)``.

    Args:
        counts: 1-D non-negative integer counts, one per symbol of the alphabet.
        max_length: longest code allowed, ``1..32``; needs ``2**max_length >= `` the number of used symbols.

    Returns:
        ``uint8`` array shaped like ``counts``: 0 for unused symbols, 1 for a single used symbol.

    Raises:
        ConfigError: counts not a 1-D non-negative integer array, ``max_length`` outside ``1..32``,
            or more used symbols than ``2**max_length`` codes.

    Example:
        >>> huffman_lengths(np.array([1, 1, 2, 3, 5, 8])).tolist()
        [5, 5, 4, 3, 2, 1]
        >>> huffman_lengths(np.array([1, 1, 2, 3, 5, 8]), max_length=3).tolist()
        [3, 3, 3, 3, 2, 2]
        >>> huffman_lengths(np.array([0, 7, 0])).tolist()
        [0, 1, 0]
    """
    _check_max_length(max_length)
    if np.ndim(counts) != 1:
        raise ConfigError(f"counts must be 1-D (one per symbol), got shape {np.shape(counts)}; use np.bincount(symbols)")
    c = _as_symbols(counts, "counts")
    lengths = np.zeros(c.size, dtype=np.uint8)
    used = np.flatnonzero(c)
    n = used.size
    if n == 0:
        return lengths
    if n == 1:
        lengths[used] = 1  # one symbol still needs one bit per occurrence, else the stream has no length
        return lengths
    if n > 2**max_length:
        raise ConfigError(f"{n} used symbols cannot get distinct codes of at most {max_length} bits; raise max_length to {math.ceil(math.log2(n))} or more")
    depth = min(int(max_length), n - 1)  # an unconstrained Huffman tree is never deeper than n - 1
    order = used[np.argsort(c[used], kind="stable")]  # lightest first, ties by symbol index
    leaf_w = c[order]
    # levels[k]: for the merged list at depth (depth - k), which items are packages (True) or leaves
    levels: list[np.ndarray] = []
    items = leaf_w
    for _ in range(depth - 1):
        half = items.size // 2
        packages = items[0 : 2 * half : 2] + items[1 : 2 * half : 2]
        merged = np.concatenate([leaf_w, packages])
        perm = np.argsort(merged, kind="stable")  # stable: a leaf goes before a package of equal weight
        levels.append(perm >= n)
        items = merged[perm]
    depth_of = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2  # items kept at the shallowest list
    for is_package in reversed(levels):
        packages_taken = int(np.count_nonzero(is_package[:take]))
        depth_of[: take - packages_taken] += 1  # leaves in a merged list are in weight order: the lightest are kept
        take = 2 * packages_taken
    depth_of[:take] += 1  # the deepest list holds leaves only
    lengths[order] = depth_of
    return lengths


def _code_tables(lengths: np.ndarray, error: type[Exception]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Canonical-code tables for ``lengths``: ``(L, bl_count, first_code, sorted_symbols)``.

    ``bl_count[l]`` codes have length ``l``; the first of them is ``first_code[l]``; ``sorted_symbols``
    lists the used symbols in ``(length, symbol)`` order. Raises ``error`` when the lengths are no
    prefix code (a length above 32, or Kraft sum above 1).
    """
    lengths = np.asarray(lengths)
    top = int(lengths.max()) if lengths.size else 0
    if top > MAX_CODE_LENGTH:
        raise error(f"code length {top} exceeds the supported maximum of {MAX_CODE_LENGTH} bits; {_FIX if error is CheckpointError else 'lower max_length'}")
    bl_count = np.bincount(lengths, minlength=top + 1).astype(np.int64)
    bl_count[0] = 0
    kraft = sum(int(bl_count[n]) << (top - n) for n in range(1, top + 1))  # sum 2^-l scaled by 2^top, exact
    if kraft > (1 << top):
        fix = _FIX if error is CheckpointError else "pass lengths from huffman_lengths"
        raise error(f"code lengths are not a prefix code (Kraft sum {kraft / (1 << top):.6g} > 1); {fix}")
    first = np.zeros(top + 1, dtype=np.uint64)
    code = 0
    for n in range(1, top + 1):
        code = (code + int(bl_count[n - 1])) << 1
        first[n] = code
    used = np.flatnonzero(lengths)
    sorted_symbols = used[np.argsort(lengths[used], kind="stable")]
    return top, bl_count, first, sorted_symbols


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code of every symbol (``uint64``, read in its ``lengths[s]`` low bits, MSB first).

    Symbols sorted by ``(length, symbol)`` get consecutive codes; when the length grows from ``l`` to
    ``l'`` the next code is shifted left by ``l' - l``: ``first(l) = (first(l-1) + count(l-1)) << 1``.

    Args:
        lengths: code length per symbol, 0 for unused symbols (e.g. from :func:`huffman_lengths`).

    Returns:
        ``uint64`` codes, 0 for unused symbols.

    Raises:
        ConfigError: lengths above 32 or violating the Kraft inequality.

    Example:
        >>> [format(int(c), f"0{l}b") for c, l in zip(canonical_codes(np.array([2, 1, 3, 3])), [2, 1, 3, 3])]
        ['10', '0', '110', '111']
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or (lengths.size and int(lengths.min()) < 0):
        raise ConfigError(f"lengths must be a 1-D array of non-negative integers, got {lengths.dtype} of shape {tuple(lengths.shape)}")
    _, bl_count, first, sorted_symbols = _code_tables(lengths.astype(np.int64), ConfigError)
    codes = np.zeros(lengths.size, dtype=np.uint64)
    if sorted_symbols.size:
        ls = lengths[sorted_symbols].astype(np.int64)
        start = np.concatenate([[0], np.cumsum(bl_count)])[ls]  # rank of the first symbol of each length
        rank = np.arange(sorted_symbols.size) - start
        codes[sorted_symbols] = first[ls] + rank.astype(np.uint64)
    return codes


@dataclass(frozen=True)
class HuffmanStream:
    """A Huffman-coded symbol stream: code lengths (the whole code book), symbol count and payload.

    Attributes:
        lengths: ``uint8`` code length per symbol of the alphabet (0 = symbol absent); read-only.
        count: number of symbols encoded.
        nbits: payload length in bits.
        payload: the codes concatenated MSB-first, ``ceil(nbits / 8)`` bytes, last byte zero-padded.
    """

    lengths: np.ndarray
    count: int
    nbits: int
    payload: bytes

    def __post_init__(self) -> None:
        lengths = np.asarray(self.lengths)
        if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or (lengths.size and (int(lengths.min()) < 0 or int(lengths.max()) > 255)):
            raise ConfigError(f"lengths must be a 1-D array of integers in 0..255, got {lengths.dtype} of shape {tuple(lengths.shape)}")
        lengths = lengths.astype(np.uint8, copy=True)  # own copy: never alias (or freeze) the caller's array
        lengths.flags.writeable = False
        object.__setattr__(self, "lengths", lengths)
        for name in ("count", "nbits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        object.__setattr__(self, "payload", bytes(self.payload))

    @property
    def alphabet(self) -> int:
        """Alphabet size ``A`` (symbols are ``0..A-1``)."""
        return int(self.lengths.size)

    @property
    def size_bytes(self) -> int:
        """Serialized size: header + lengths + payload + CRC (``len(self.to_bytes())``)."""
        return _HEADER.size + self.alphabet + len(self.payload) + _CRC.size

    def to_bytes(self) -> bytes:
        """Serialize (layout in the module docstring); :meth:`from_bytes` inverts it."""
        if self.alphabet >= 2**32:
            raise ConfigError(f"alphabet of {self.alphabet} symbols does not fit the 32-bit header field; use fewer symbols")
        body = _HEADER.pack(MAGIC, FORMAT_VERSION, self.alphabet, self.count, self.nbits) + self.lengths.tobytes() + self.payload
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> HuffmanStream:
        """Parse :meth:`to_bytes` output, checking magic, version, size, CRC32 and that the lengths form a prefix code.

        Raises:
            CheckpointError: the bytes are truncated, not a lowbit Huffman stream, from a newer version or corrupt.
        """
        data = bytes(data)
        if len(data) < _HEADER.size + _CRC.size:
            raise CheckpointError(f"Huffman stream is truncated: {len(data)} bytes, the header alone takes {_HEADER.size + _CRC.size}; {_FIX}")
        magic, version, alphabet, count, nbits = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CheckpointError(f"not a lowbit Huffman stream: magic {magic!r}, expected {MAGIC!r}; check the file/offset or {_FIX}")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"Huffman stream version {version} is newer than this lowbit reads ({FORMAT_VERSION}); upgrade lowbit")
        if version < 1:
            raise CheckpointError(f"Huffman stream version {version} does not exist (versions start at 1); {_FIX}")
        expected = _HEADER.size + alphabet + (nbits + 7) // 8 + _CRC.size
        if len(data) != expected:
            what = "truncated" if len(data) < expected else "followed by extra bytes"
            raise CheckpointError(f"Huffman stream is {what} (or its header is damaged): {len(data)} bytes, its header describes {expected}; {_FIX}")
        (crc,) = _CRC.unpack_from(data, expected - _CRC.size)
        if zlib.crc32(data[: expected - _CRC.size]) != crc:
            raise CheckpointError(f"Huffman stream is corrupt: CRC32 mismatch; {_FIX}")
        lengths = np.frombuffer(data, dtype=np.uint8, count=alphabet, offset=_HEADER.size)
        _code_tables(lengths, CheckpointError)
        return cls(lengths=lengths, count=count, nbits=nbits, payload=data[_HEADER.size + alphabet : expected - _CRC.size])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HuffmanStream):
            return NotImplemented
        return (self.count, self.nbits, self.payload) == (other.count, other.nbits, other.payload) and np.array_equal(self.lengths, other.lengths)

    def __hash__(self) -> int:
        return hash((self.lengths.tobytes(), self.count, self.nbits, self.payload))

    def __repr__(self) -> str:  # the payload can be megabytes: summarise it
        return f"HuffmanStream(alphabet={self.alphabet}, count={self.count}, nbits={self.nbits}, size_bytes={self.size_bytes})"


def huffman_encode(symbols: np.ndarray | Sequence[int], alphabet: int | None = None, *, max_length: int = 24) -> HuffmanStream:
    """Huffman-code a stream of non-negative integers with a canonical, length-limited code.

    Vectorised: each symbol's code is left-aligned in a 64-bit word and shifted to its bit offset
    ``o_i = sum_{j<i} l_j``; a code of at most 32 bits touches at most two 64-bit output words, and
    the disjoint pieces of each word are OR-reduced (``np.bitwise_or.reduceat``).

    Args:
        symbols: integers in ``0..alphabet-1``, any shape (flattened in C order); a list works too.
        alphabet: alphabet size; default ``max(symbols) + 1``. Pass it to store a fixed-size code book.
        max_length: longest code allowed (``1..32``), see :func:`huffman_lengths`.

    Returns:
        The :class:`HuffmanStream`.

    Raises:
        ConfigError: non-integer or negative symbols, a symbol ``>= alphabet``, bad ``max_length``.

    Example:
        >>> stream = huffman_encode([2, 2, 2, 0], alphabet=4)
        >>> stream.lengths.tolist(), stream.count, stream.nbits, stream.payload.hex()
        ([1, 0, 1, 0], 4, 4, 'e0')
    """
    _check_max_length(max_length)
    sym = _as_symbols(symbols)
    top = int(sym.max()) + 1 if sym.size else 0
    if alphabet is None:
        alphabet = top
    if isinstance(alphabet, bool) or not isinstance(alphabet, int | np.integer) or not 0 <= alphabet < 2**32:
        raise ConfigError(f"alphabet must be an integer in 0..2**32-1 (the header stores it in 32 bits), got {alphabet!r}")
    if top > alphabet:
        raise ConfigError(f"symbol {top - 1} is outside the alphabet 0..{alphabet - 1}; pass alphabet >= {top} (or None to infer it)")
    lengths = huffman_lengths(np.bincount(sym, minlength=alphabet), max_length=max_length)
    if sym.size == 0:
        return HuffmanStream(lengths=lengths, count=0, nbits=0, payload=b"")
    codes = canonical_codes(lengths)
    ls = lengths.astype(np.int64)[sym]
    ends = np.cumsum(ls)
    nbits = int(ends[-1])
    offsets = ends - ls
    aligned = codes[sym] << (64 - ls).astype(np.uint64)  # code in the top l bits of a 64-bit word
    word = offsets >> 6
    shift = (offsets & 63).astype(np.uint64)
    nwords = (nbits + 63) // 64
    out = np.zeros(nwords + 1, dtype=np.uint64)
    # word offsets are non-decreasing, so each word's pieces are a contiguous run: OR-reduce the runs
    starts = np.flatnonzero(np.diff(word, prepend=-1))
    out[word[starts]] |= np.bitwise_or.reduceat(aligned >> shift, starts)
    spill = np.flatnonzero(offsets % 64 + ls > 64)  # codes crossing into the next word
    if spill.size:
        tail = aligned[spill] << (np.uint64(64) - shift[spill])  # shift >= 33 here, so 64 - shift is in 1..31
        w = word[spill] + 1
        starts = np.flatnonzero(np.diff(w, prepend=-1))
        out[w[starts]] |= np.bitwise_or.reduceat(tail, starts)
    payload = out[:nwords].astype(">u8").tobytes()[: (nbits + 7) // 8]
    return HuffmanStream(lengths=lengths, count=int(sym.size), nbits=nbits, payload=payload)


def _chain(next_pos: np.ndarray, start: int) -> np.ndarray:
    """Positions ``start, next[start], next[next[start]], ...`` below the sentinel ``len(next) - 1``.

    Pointer doubling: with ``P`` the first ``2^k`` chain positions and ``J = next^(2^k)``, the next
    ``2^k`` are ``J[P]``; ``J`` squares each round. ``next`` must be increasing along the chain and
    map the sentinel to itself.
    """
    end = next_pos.size - 1
    chain = np.array([start], dtype=next_pos.dtype)
    jump = next_pos
    while chain[-1] != end:
        chain = np.concatenate([chain, jump[chain]])
        if chain[-1] == end:
            break
        jump = jump[jump]
    return chain[: np.searchsorted(chain, end)]


def huffman_decode(stream: HuffmanStream) -> np.ndarray:
    """Decode a :class:`HuffmanStream` back to its symbols (``int64``).

    Table-free and vectorised: for every bit position ``p`` of a chunk, the next ``L`` bits (``L`` the
    longest code) are read as an integer ``w``; canonical codes make the code length the smallest ``l``
    with ``w < (first(l) + count(l)) << (L - l)`` (``np.searchsorted``). That gives ``next(p) = p + l``
    at every position; the positions actually decoded, ``0, next(0), ...``, are found by pointer
    doubling, and only there are symbols looked up.

    Raises:
        CheckpointError: lengths that are no prefix code, a payload shorter than ``nbits``, a bit
            pattern that is no code (incomplete code), a code running past ``nbits``, or a symbol count
            different from ``count``.

    Example:
        >>> huffman_decode(huffman_encode(np.array([3, 1, 3, 3]))).tolist()
        [3, 1, 3, 3]
    """
    if not isinstance(stream, HuffmanStream):
        raise ConfigError(f"huffman_decode takes a HuffmanStream (use HuffmanStream.from_bytes), got {type(stream).__name__}")
    top, bl_count, first, sorted_symbols = _code_tables(stream.lengths, CheckpointError)
    count, nbits = stream.count, stream.nbits
    nbytes = (nbits + 7) // 8
    if len(stream.payload) < nbytes:
        raise CheckpointError(f"Huffman payload holds {len(stream.payload)} bytes but nbits={nbits} needs {nbytes}; the stream is truncated, {_FIX}")
    if count == 0 or nbits == 0:
        if count or nbits:
            raise CheckpointError(f"Huffman stream says {count} symbols in {nbits} bits; one without the other is impossible, {_FIX}")
        return np.zeros(0, dtype=np.int64)
    if top == 0:
        raise CheckpointError(f"Huffman stream has {count} symbols but no symbol has a code length; {_FIX}")
    # left-aligned upper limits of the codes of length <= l, l = 1..top
    ls = np.arange(1, top + 1)
    limits = (first[1:] + bl_count[1:].astype(np.uint64)) << (top - ls).astype(np.uint64)
    offset = np.concatenate([[0], np.cumsum(bl_count)])  # offset[l]: rank of the first code of length l
    buf = np.frombuffer(stream.payload, dtype=np.uint8, count=nbytes)
    out: list[np.ndarray] = []
    decoded = 0
    pos = 0  # global bit position of the next code
    for a in range(0, nbits, _DECODE_CHUNK_BITS):
        e = min(a + _DECODE_CHUNK_BITS, nbits)
        if pos >= e:
            continue
        b0, b1 = a >> 3, ((e - 1) >> 3) + 1
        seg = np.zeros(b1 - b0 + 8, dtype=np.uint64)  # the chunk's bytes and up to 8 after it (codes cross chunk ends)
        tail = buf[b0 : b1 + 8]
        seg[: tail.size] = tail
        words = np.zeros(b1 - b0, dtype=np.uint64)  # words[i]: the 8 bytes from byte b0 + i, big-endian
        for j in range(8):
            words |= seg[j : j + b1 - b0] << np.uint64(56 - 8 * j)
        p = np.arange(a, e, dtype=np.int64)
        window = (words[(p >> 3) - b0] << (p & 7).astype(np.uint64)) >> np.uint64(64 - top)
        lidx = np.searchsorted(limits, window, side="right")  # code length - 1; == top: no code starts here
        size = e - a
        nxt = np.minimum(np.arange(size, dtype=np.int64) + lidx + 1, size)
        nxt[lidx == top] = size
        chain = _chain(np.append(nxt, size), pos - a)
        last = int(chain[-1])
        if lidx[last] == top:
            raise CheckpointError(f"Huffman payload bit {a + last} starts a pattern that is no code of this code book (incomplete code); {_FIX}")
        code_len = lidx[chain] + 1
        pos = a + last + int(code_len[-1])
        if pos > nbits:
            raise CheckpointError(f"the last Huffman code runs past nbits={nbits} (to bit {pos}); the stream is truncated, {_FIX}")
        decoded += chain.size
        if decoded > count:
            raise CheckpointError(f"Huffman payload holds more than the {count} symbols the header announces; {_FIX}")
        idx = offset[code_len] + (window[chain] >> (top - code_len).astype(np.uint64)).astype(np.int64) - first[code_len].astype(np.int64)
        out.append(sorted_symbols[idx])
    if decoded != count:
        raise CheckpointError(f"Huffman payload decodes to {decoded} symbols, the header announces {count}; {_FIX}")
    return np.concatenate(out).astype(np.int64, copy=False)


def entropy_bits(symbols: np.ndarray | Sequence[int]) -> float:
    """Shannon lower bound on the payload: ``H = sum_i -log2 p(s_i) = -sum_s n_s log2(n_s / N)`` bits.

    No prefix code beats it; a Huffman code stays below ``H + N`` (one bit per symbol on average).

    Example:
        >>> entropy_bits([0, 0, 1, 1]), entropy_bits([5, 5, 5]), entropy_bits([])
        (4.0, 0.0, 0.0)
    """
    sym = _as_symbols(symbols)
    if sym.size == 0:
        return 0.0
    n = np.bincount(sym)
    n = n[n > 0].astype(np.float64)
    return float(max(0.0, -(n * np.log2(n / sym.size)).sum()))

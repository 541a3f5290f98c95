"""Relative-index sparse encoding of pruned weights (Han et al. 2016, Deep Compression, Sec. 2:
relative indices with filler zeros).

A pruned layer's flat codebook indices ``x[0..n-1]`` are stored as the kept entries only, each with
the *gap* to the previous stored entry: for stored positions ``q_0 < q_1 < ...`` (``q_{-1} = -1``),
``gap_k = q_k - q_{k-1} - 1``. A gap must fit in ``b = index_bits`` bits, i.e. ``gap <= 2^b - 1``;
a longer run of zeros is bridged by *filler* entries: a ``zero`` value stored at the position
``2^b`` past the previous entry (gap ``2^b - 1``). A run of ``g`` zeros before a kept entry so takes
``floor(g / 2^b)`` fillers and leaves a final gap ``g mod 2^b``. Zeros after the last kept entry are
not stored; the decoder fills them from the known length.

Example (3-bit gaps, as in the paper's illustration: the 10 zeros before position 15 exceed the 7 a gap
can skip, so a filler zero is stored at position 12, 8 past the entry at 4):
    >>> import numpy as np
    >>> x = np.array([0, 5, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3])
    >>> gaps, values = relative_index_encode(x, index_bits=3)
    >>> gaps.tolist(), values.tolist()
    ([1, 2, 7, 2], [5, 7, 0, 3])
    >>> relative_index_decode(gaps, values, length=x.size).tolist() == x.tolist()
    True
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .checkpoint import CheckpointError

MAX_INDEX_BITS = 32


def _int_array(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.size == 0 and not isinstance(x, np.ndarray):
        return np.zeros(0, dtype=np.int64)  # np.asarray([]) is float64
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"{name} must be an integer array, got dtype {arr.dtype}; convert with .astype(np.int64)")
    return arr.reshape(-1).astype(np.int64, copy=False)


def _check_int(value: int, name: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an integer {allowed}, got {value!r}")


def relative_index_encode(symbols: np.ndarray, index_bits: int, zero: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Encode the kept (``!= zero``) entries of ``symbols`` as ``(gaps, values)`` with ``index_bits``-bit gaps.

    Args:
        symbols: integer symbols (any shape, flattened in C order); ``zero`` marks a pruned position.
        index_bits: bits per gap, ``1..32`` (the paper uses 8 for conv and 5 for fc layers).
        zero: the symbol of a pruned position (also the value of filler entries).

    Returns:
        ``(gaps, values)``, two ``int64`` arrays of equal length; every gap is in ``0..2**index_bits - 1``
        and ``values[k] == zero`` exactly for the fillers.

    Raises:
        ConfigError: non-integer symbols, ``index_bits`` outside ``1..32``, non-integer ``zero``.

    Example:
        >>> gaps, values = relative_index_encode(np.array([0, 0, 0, 0, 0, 9]), index_bits=1)
        >>> gaps.tolist(), values.tolist()
        ([1, 1, 1], [0, 0, 9])
    """
    _check_int(index_bits, "index_bits", 1, MAX_INDEX_BITS)
    _check_int(zero, "zero", np.iinfo(np.int64).min)
    x = _int_array(symbols, "symbols")
    kept = np.flatnonzero(x != zero)
    run = np.diff(kept, prepend=-1) - 1  # zeros skipped before each kept entry
    period = 1 << index_bits  # one filler covers 2^b positions: 2^b - 1 skipped zeros + the filler itself
    fillers = run // period
    ends = np.cumsum(fillers + 1) - 1  # where each kept entry lands, after its fillers
    total = int(ends[-1]) + 1 if ends.size else 0
    gaps = np.full(total, period - 1, dtype=np.int64)
    values = np.full(total, zero, dtype=np.int64)
    gaps[ends] = run % period
    values[ends] = x[kept]
    return gaps, values


def relative_index_decode(gaps: np.ndarray, values: np.ndarray, length: int, zero: int = 0) -> np.ndarray:
    """Inverse of :func:`relative_index_encode`: ``length`` symbols (``int64``), ``zero`` where nothing is stored.

    Entry ``k`` lands at position ``q_k = sum_{j<=k} (gap_j + 1) - 1``.

    Args:
        gaps: non-negative gaps, one per stored entry.
        values: the stored symbols (fillers hold ``zero``).
        length: number of symbols of the dense stream.
        zero: the symbol written at every position not stored.

    Raises:
        CheckpointError: ``gaps`` and ``values`` differ in length, a gap is negative, or the gaps run
            past ``length`` (a corrupt or mismatched file).
        ConfigError: non-integer arrays, negative ``length``.

    Example:
        >>> relative_index_decode(np.array([1, 0]), np.array([4, 2]), length=4).tolist()
        [0, 4, 2, 0]
    """
    _check_int(length, "length", 0)
    _check_int(zero, "zero", np.iinfo(np.int64).min)
    g = _int_array(gaps, "gaps")
    v = _int_array(values, "values")
    fix = "re-save the file from the original model, or pass the length of the layer it was encoded from"
    if g.size != v.size:
        raise CheckpointError(f"relative-index stream has {g.size} gaps but {v.size} values; they must pair up, {fix}")
    if g.size and int(g.min()) < 0:
        raise CheckpointError(f"relative-index stream holds a negative gap ({int(g.min())}); {fix}")
    pos = np.cumsum(g + 1) - 1
    if pos.size and int(pos[-1]) >= length:
        raise CheckpointError(f"relative-index gaps reach position {int(pos[-1])}, past length={length}; {fix}")
    out = np.full(int(length), zero, dtype=np.int64)
    out[pos] = v
    return out

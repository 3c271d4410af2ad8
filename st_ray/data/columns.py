"""Compact in-memory columns for per-row data held by every training worker.

A worker keeps one entry per cached image (its sample facts, where its row lives). As Python
objects that is 1-2 KiB a row -- 100k images cost a worker 100-200 MiB more than 10k. These
helpers turn Arrow columns into numpy arrays without making a Python object per row:
strings become fixed-width byte arrays (hashes are 64 bytes a row, sortable and searchable
with numpy), lists of ints a padded matrix, and repeated values small integer ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def fixed_width_strings(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """UTF-8 strings as numpy ``S<width>`` (width: the longest value; shorter ones padded
    with NUL, which numpy drops on reading). Byte order is code-point order, so sorting and
    ``searchsorted`` agree with Python's ``str`` order. Values must not hold NUL characters
    (hashes and ids do not)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise ValueError("a string column with missing values")
    array = array.cast(pa.large_binary())
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + n + 1]
    lengths = np.diff(offsets)
    width = max(int(lengths.max()) if n else 0, 1)
    data = array.buffers()[2]
    values = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    values = values[offsets[0] : offsets[-1]]
    if n and (lengths == width).all():
        return values.view(f"S{width}").copy()
    matrix = np.zeros((n, width), dtype=np.uint8)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(len(values)) - np.repeat(offsets[:-1] - offsets[0], lengths)
    matrix[rows, cols] = values
    return matrix.reshape(-1).view(f"S{width}")


def to_fixed(values: Iterable[str]) -> np.ndarray:
    """Python strings as ``fixed_width_strings`` does it (small inputs, lookups)."""
    return fixed_width_strings(pa.array(list(values), pa.string()))


def int_matrix(column: pa.Array | pa.ChunkedArray, fill: int = -1) -> np.ndarray:
    """A list<int> column as an (n, longest) int64 matrix, short rows padded with ``fill``."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    width = int(lengths.max()) if n else 0
    matrix = np.full((n, width), fill, dtype=np.int64)
    flat = pc.list_flatten(array).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(len(flat)) - np.repeat(starts, lengths)
    matrix[rows, cols] = flat
    return matrix


def dictionary_ids(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """(an int32 id per row, the distinct values in id order) of a low-cardinality column."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = pc.dictionary_encode(array)
    ids = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
    return ids, encoded.dictionary.to_pylist()


# SHA-256 hex digests (content and caption hashes) are held as their 32 raw bytes: half the
# memory, same order (lowercase hex sorts as the bytes it spells).
_HEX = np.full(256, -1, np.int16)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
HEX_WIDTH = 64


def hash_keys(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, bool]:
    """Keys as ``fixed_width_strings``, or packed to ``S32`` when every one is a 64-character
    lowercase hex digest. Returns (keys, packed)."""
    fixed = fixed_width_strings(column)
    if fixed.dtype.itemsize != HEX_WIDTH or not len(fixed):
        return fixed, False
    nibbles = _HEX[fixed.view(np.uint8).reshape(len(fixed), HEX_WIDTH)]
    if (nibbles < 0).any():
        return fixed, False
    packed = (nibbles[:, 0::2] << 4 | nibbles[:, 1::2]).astype(np.uint8)
    return packed.reshape(-1).view(f"S{HEX_WIDTH // 2}"), True


def unpack_hex(packed: np.ndarray) -> np.ndarray:
    """``hash_keys``' packed digests back to their 64-character text (``S64``)."""
    raw = np.zeros((len(packed), HEX_WIDTH // 2), np.uint8)
    if len(packed):
        raw[:] = packed.astype(f"S{HEX_WIDTH // 2}").view(np.uint8).reshape(len(packed), -1)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    text = np.empty((len(packed), HEX_WIDTH), np.uint8)
    text[:, 0::2] = digits[raw >> 4]
    text[:, 1::2] = digits[raw & 15]
    return text.reshape(-1).view(f"S{HEX_WIDTH}")


def same_form(arrays: list[np.ndarray], packed: list[bool]) -> tuple[list[np.ndarray], bool]:
    """Parts of one key column in one form: packed if all are, else all as text."""
    if all(packed):
        return arrays, True
    return [unpack_hex(a) if p else a for a, p in zip(arrays, packed, strict=True)], False


_DIGITS = frozenset("0123456789abcdef")


def query_keys(keys: Sequence[str], packed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Keys to look up in a ``hash_keys`` array of that form: (values, usable). A key that
    is not a digest cannot be in a packed array (usable False)."""
    if not packed:
        return to_fixed(keys), np.ones(len(keys), bool)
    usable = [len(k) == HEX_WIDTH and set(k) <= _DIGITS for k in keys]
    values = [bytes.fromhex(k) if ok else b"" for k, ok in zip(keys, usable, strict=True)]
    return np.array(values, dtype=f"S{HEX_WIDTH // 2}"), np.array(usable, bool)


def key_text(value: bytes, packed: bool) -> str:
    """A key as the text it was given as (``value``: an item of a ``hash_keys`` array)."""
    if packed:
        return value.ljust(HEX_WIDTH // 2, b"\0").hex()
    return value.decode()

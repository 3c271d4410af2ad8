"""The in-memory row index of a cache: key -> where its row lives, as sorted numpy columns.

Every training worker holds one per cache, for the whole run. It is built from the index
file (``cache_index``) a record batch at a time into preallocated arrays: no Python object
per row and no whole decoded table in memory, so a worker's memory hardly grows with the
dataset (~80 bytes a latent row: hash keys are held as their 32 raw bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from st_ray.data.columns import (
    dictionary_ids,
    hash_keys,
    int_matrix,
    key_text,
    query_keys,
    unpack_hex,
)

CHUNK_ROWS = 16384  # rows decoded at once


class RowIndex:
    """Rows by key, sorted by key; ``find`` looks keys up by binary search. Per payload column
    ``c``: ``offset[c]``, ``length[c]``, ``codec[c]``, ``nbytes[c]`` and ``layout[c]`` (an id
    into ``layouts``: (shape, dtype)) per row."""

    def __init__(self, shards: list[str], payload: list[str], rows: int) -> None:
        self.shards = shards
        self.payload = payload
        self.keys = np.zeros(rows, dtype="S1")
        self.packed = False  # keys: 32-byte digests (hash_keys), else text
        self.shard = np.zeros(rows, np.int32)
        self.row_group = np.zeros(rows, np.int32)
        self.row = np.zeros(rows, np.int32)
        self.offset = {c: np.zeros(rows, np.int64) for c in payload}
        self.length = {c: np.zeros(rows, np.int64) for c in payload}
        self.codec = {c: np.zeros(rows, np.int8) for c in payload}
        self.nbytes = {c: np.zeros(rows, np.int64) for c in payload}
        self.layout = {c: np.zeros(rows, np.int32) for c in payload}
        # Shapes and dtypes repeat (one per bucket): the distinct ones, an id per row.
        self.layouts: list[tuple[tuple[int, ...], str]] = []
        self._known: dict[tuple[tuple[int, ...], str], int] = {}
        self._filled = 0

    @classmethod
    def from_batches(
        cls,
        shards: Sequence[str],
        payload: Sequence[str],
        rows: int,
        batches: Iterable[pa.RecordBatch],
    ) -> RowIndex:
        """The index of ``rows`` rows given in record batches (index-file columns)."""
        index = cls(list(shards), list(payload), rows)
        for batch in batches:
            index._add(batch)
        if index._filled != rows:
            raise ValueError(f"{index._filled} rows, expected {rows}")
        index._sort()
        return index

    @classmethod
    def from_table(cls, shards: Sequence[str], payload: Sequence[str], table: pa.Table) -> RowIndex:
        batches = table.to_batches(max_chunksize=CHUNK_ROWS)
        return cls.from_batches(shards, payload, table.num_rows, batches)

    def _add(self, batch: pa.RecordBatch) -> None:
        at, n = self._filled, batch.num_rows
        if not n:
            return
        end = at + n
        if end > len(self.keys):
            raise ValueError(f"more than the {len(self.keys)} rows the index file says")
        keys, packed = hash_keys(batch.column("key"))
        if at == 0:
            self.packed = packed
        elif packed != self.packed:  # digests and other keys mixed (not from st_ray)
            if self.packed:
                self.keys, self.packed = unpack_hex(self.keys), False
            keys = unpack_hex(keys) if packed else keys
        if keys.dtype.itemsize > self.keys.dtype.itemsize:
            self.keys = self.keys.astype(keys.dtype)  # wider keys than so far (rare)
        self.keys[at:end] = keys
        for name in ("shard", "row_group", "row"):
            getattr(self, name)[at:end] = batch.column(name).to_numpy()
        for c in self.payload:
            for name in ("offset", "length", "codec", "nbytes"):
                getattr(self, name)[c][at:end] = batch.column(f"{c}.{name}").to_numpy()
            self.layout[c][at:end] = self._layout_ids(batch, c)
        self._filled = end

    def _layout_ids(self, batch: pa.RecordBatch, c: str) -> np.ndarray:
        shapes = int_matrix(batch.column(f"{c}.shape"))
        dtype_ids, dtypes = dictionary_ids(batch.column(f"{c}.dtype"))
        distinct, ids = np.unique(np.column_stack([shapes, dtype_ids]), axis=0, return_inverse=True)
        local = []
        for values in distinct.tolist():
            layout = (tuple(int(v) for v in values[:-1] if v >= 0), dtypes[int(values[-1])])
            if layout not in self._known:
                self._known[layout] = len(self.layouts)
                self.layouts.append(layout)
            local.append(self._known[layout])
        return np.array(local, np.int32)[ids.reshape(-1)]

    def _sort(self) -> None:
        order = np.argsort(self.keys, kind="stable")
        self.keys = self.keys[order]
        for name in ("shard", "row_group", "row"):
            setattr(self, name, getattr(self, name)[order])
        for name in ("offset", "length", "codec", "nbytes", "layout"):
            columns = getattr(self, name)
            for c in self.payload:
                columns[c] = columns[c][order]

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return bool(self.find([key])[0] >= 0)

    def find(self, keys: Sequence[str]) -> np.ndarray:
        """Positions of ``keys`` (int64), -1 for those not in the index."""
        if not len(keys):
            return np.zeros(0, np.int64)
        wanted, usable = query_keys(keys, self.packed)
        if not len(self.keys):
            return np.full(len(wanted), -1, np.int64)
        at = np.searchsorted(self.keys, wanted.astype(self.keys.dtype))
        at = np.minimum(at, len(self.keys) - 1)
        return np.where(usable & (self.keys[at] == wanted), at, -1).astype(np.int64)

    def key_list(self) -> list[str]:
        """Every key, sorted (tests, tools; a Python string per row)."""
        return [key_text(k, self.packed) for k in self.keys.tolist()]

    def row_bytes(self, position: int) -> int:
        """Payload bytes of the row at ``position`` (what a read of it must fetch)."""
        return int(sum(self.nbytes[c][position] for c in self.payload))

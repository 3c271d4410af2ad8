"""Reading cached rows by key with reads proportional to what is asked for.

``CacheRows`` looks a key up in the cache's row index (``cache_index``) and fetches its
payload with one ranged read of the row's byte span (``read_at`` on a pyarrow file: ``pread``
locally, an HTTP range GET on S3), checking the 4-byte length Parquet stores before each
value. Rows whose layout does not allow that (caches written before row indexes, compressed
ones) are read with ``ParquetFile.read_row_group`` of just their row group and columns.

Thread-safe: the feed's reader threads call ``fetch`` concurrently. Open files are kept in a
small LRU (handles, not data: nothing here caches rows). A shard that is missing or
unreadable raises ``ShardReadError`` naming it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from st_ray.data.cache_index import CODECS, RowIndex, ShardReadError, shard_error
from st_ray.data.cache_store import CacheStore

OPEN_FILES = 32  # shard handles kept open per reader


def tensor(data: Any, shape: Sequence[int], dtype: str) -> torch.Tensor:
    """A tensor owning a copy of ``data`` (frombuffer views are read-only)."""
    array = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(tuple(shape))
    return torch.from_numpy(array.copy())


class CacheRows:
    """Payload columns of a committed cache's rows by key: {column: tensor} per key."""

    def __init__(self, store: CacheStore) -> None:
        manifest = store.read_manifest()
        if manifest is None:
            raise FileNotFoundError(f"no committed {store.kind} cache in {store.root}")
        self.store = store
        self.index: RowIndex = store.row_index(manifest)
        self._fs = store.pyarrow_filesystem()
        self._lock = threading.Lock()
        self._files: OrderedDict[int, Any] = OrderedDict()
        self._parquet: OrderedDict[int, tuple[pq.ParquetFile, threading.Lock]] = OrderedDict()
        self.rows_read = 0  # rows fetched from storage
        self.bytes_read = 0  # bytes requested from storage (ranges and row groups)
        self.group_reads = 0  # rows read with their row group (layouts without byte ranges)
        # Called before each row is read (the feed pauses its reader threads there while
        # the training thread assembles a batch).
        self.before_row: Callable[[], None] | None = None

    @property
    def payload(self) -> list[str]:
        return self.index.payload

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def positions(self, keys: Iterable[str]) -> dict[str, int]:
        """Index positions of ``keys``; KeyError naming the cache for unknown ones."""
        wanted = list(dict.fromkeys(keys))
        found = self.index.find(wanted).tolist()
        unknown = [key for key, position in zip(wanted, found, strict=True) if position < 0]
        if unknown:
            raise KeyError(
                f"{len(unknown)} key(s) not in the {self.store.kind} cache {self.store.root} "
                f"(e.g. {unknown[0]}); rerun the caching stage to bring it up to date"
            )
        return dict(zip(wanted, found, strict=True))

    def nbytes(self, keys: Iterable[str]) -> int:
        """Payload bytes of ``keys`` (distinct): what fetching them reads (and holds)."""
        return sum(self.index.row_bytes(p) for p in self.positions(keys).values())

    def fetch(self, keys: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
        """{key: {payload column: tensor}} of ``keys`` (distinct), read from storage."""
        out = {}
        fallback: dict[tuple[int, int], list[tuple[str, int]]] = {}
        for key, position in self.positions(keys).items():
            if self.before_row is not None:
                self.before_row()
            row = None
            if all(self.index.offset[c][position] >= 0 for c in self.payload):
                row = self._read_direct(position)
            if row is not None:
                out[key] = row
            else:
                group = (int(self.index.shard[position]), int(self.index.row_group[position]))
                fallback.setdefault(group, []).append((key, position))
        for (shard, group), rows in fallback.items():
            out.update(self._read_group(shard, group, rows))
            with self._lock:
                self.group_reads += len(rows)
        with self._lock:
            self.rows_read += len(out)
        return out

    def _shard(self, shard: int) -> str:
        return self.index.shards[shard]

    def _file(self, shard: int) -> Any:
        with self._lock:
            handle = self._files.get(shard)
            if handle is not None:
                self._files.move_to_end(shard)
                return handle
        path = f"{self.store.path}/{self._shard(shard)}"
        try:
            handle = self._fs.open_input_file(path)
        except (OSError, pa.ArrowException) as error:
            raise shard_error(self.store.root, self._shard(shard), error) from error
        with self._lock:
            self._files[shard] = handle
            # Not closed here: another thread may be reading through it; a dropped handle
            # closes when its last user lets go of it.
            while len(self._files) > OPEN_FILES:
                self._files.popitem(last=False)
        return handle

    def _read_direct(self, position: int) -> dict[str, torch.Tensor] | None:
        """The row's payload by one ranged read; None when a chunk is not laid out as its
        index says it is (then the caller reads the row group)."""
        shard = int(self.index.shard[position])
        chunks = {}
        for c in self.payload:
            start = int(self.index.offset[c][position])
            end = start + int(self.index.length[c][position])
            codec = CODECS[int(self.index.codec[c][position])]
            nbytes = int(self.index.nbytes[c][position])
            # Uncompressed: just the value and its 4-byte length, at the chunk's end.
            first = end - nbytes - 4 if codec == "UNCOMPRESSED" else start
            chunks[c] = (first, end, codec, nbytes)
        if not chunks:
            return {}
        # One read covers the row's payload columns (they sit in one row group).
        low = min(first for first, *_ in chunks.values())
        high = max(end for _, end, *_ in chunks.values())
        try:
            data = self._file(shard).read_at(high - low, low)
        except (OSError, pa.ArrowException) as error:
            raise shard_error(self.store.root, self._shard(shard), error) from error
        with self._lock:
            self.bytes_read += high - low
        view = memoryview(data)
        if len(view) != high - low:
            raise shard_error(
                self.store.root, self._shard(shard), EOFError(f"short read at byte {low}")
            )
        row = {}
        for c, (first, end, codec, nbytes) in chunks.items():
            chunk = view[first - low : end - low]
            value = chunk if codec == "UNCOMPRESSED" else _page_values(chunk, codec)
            if value is None or int.from_bytes(value[-nbytes - 4 : -nbytes], "little") != nbytes:
                return None
            shape, dtype = self.index.layouts[self.index.layout[c][position]]
            row[c] = tensor(value[len(value) - nbytes :], shape, dtype)
        return row

    def _read_group(
        self, shard: int, group: int, rows: list[tuple[str, int]]
    ) -> dict[str, dict[str, torch.Tensor]]:
        columns = [*self.payload]
        try:
            with self._lock:
                parquet = self._parquet.get(shard)
            if parquet is None:
                parquet = (pq.ParquetFile(self._file(shard)), threading.Lock())
                with self._lock:
                    self._parquet[shard] = parquet
                    while len(self._parquet) > OPEN_FILES:
                        self._parquet.popitem(last=False)
            # A ParquetFile is not safe to read from two threads at once.
            with parquet[1]:
                table = parquet[0].read_row_group(group, columns=columns)
                meta = parquet[0].metadata.row_group(group)
        except (OSError, pa.ArrowException) as error:
            raise shard_error(self.store.root, self._shard(shard), error) from error
        with self._lock:
            self.bytes_read += sum(
                meta.column(j).total_compressed_size
                for j in range(meta.num_columns)
                if meta.column(j).path_in_schema in columns
            )
        out = {}
        for key, position in rows:
            row = int(self.index.row[position])
            out[key] = {
                c: tensor(
                    table.column(c)[row].as_py(),
                    *self.index.layouts[self.index.layout[c][position]],
                )
                for c in columns
            }
        return out


__all__ = ["CacheRows", "ShardReadError", "tensor"]


_DATA_PAGE = 0  # PageType.DATA_PAGE (v1)


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _page_values(chunk: memoryview, codec: str) -> bytes | None:
    """The decompressed content of a column chunk made of one v1 data page, or None when it
    is not that. The page header is Thrift compact: its first three fields are type,
    uncompressed size and compressed size (i32, zigzag varints, field header 0x15 each); the
    compressed page is the chunk's tail."""
    fields = []
    at = 0
    try:
        for _ in range(3):
            if chunk[at] != 0x15:
                return None
            raw, at = _varint(chunk, at + 1)
            fields.append((raw >> 1) ^ -(raw & 1))
    except IndexError:
        return None
    kind, uncompressed, compressed = fields
    if kind != _DATA_PAGE or not 0 < compressed <= len(chunk) - at:
        return None
    try:
        return (
            pa.Codec(codec.lower())
            .decompress(chunk[len(chunk) - compressed :], decompressed_size=uncompressed)
            .to_pybytes()
        )
    except (OSError, pa.ArrowException):
        return None

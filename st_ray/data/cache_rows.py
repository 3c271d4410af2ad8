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
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from st_ray.data.cache_index import RowIndex, ShardReadError, shard_error
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
        self._parquet: OrderedDict[int, pq.ParquetFile] = OrderedDict()
        self.rows_read = 0  # rows fetched from storage
        self.bytes_read = 0  # bytes requested from storage (ranges and row groups)

    @property
    def payload(self) -> list[str]:
        return self.index.payload

    def __contains__(self, key: str) -> bool:
        return key in self.index.position

    def positions(self, keys: Iterable[str]) -> dict[str, int]:
        """Index positions of ``keys``; KeyError naming the cache for unknown ones."""
        found, unknown = {}, []
        for key in dict.fromkeys(keys):
            position = self.index.position.get(key)
            if position is None:
                unknown.append(key)
            else:
                found[key] = position
        if unknown:
            raise KeyError(
                f"{len(unknown)} key(s) not in the {self.store.kind} cache {self.store.root} "
                f"(e.g. {unknown[0]}); rerun the caching stage to bring it up to date"
            )
        return found

    def nbytes(self, keys: Iterable[str]) -> int:
        """Payload bytes of ``keys`` (distinct): what fetching them reads (and holds)."""
        return sum(self.index.row_bytes(p) for p in self.positions(keys).values())

    def fetch(self, keys: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
        """{key: {payload column: tensor}} of ``keys`` (distinct), read from storage."""
        out = {}
        fallback: dict[tuple[int, int], list[tuple[str, int]]] = {}
        for key, position in self.positions(keys).items():
            if all(self.index.offset[c][position] >= 0 for c in self.payload):
                out[key] = self._read_direct(position)
            else:
                group = (int(self.index.shard[position]), int(self.index.row_group[position]))
                fallback.setdefault(group, []).append((key, position))
        for (shard, group), rows in fallback.items():
            out.update(self._read_group(shard, group, rows))
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

    def _read_direct(self, position: int) -> dict[str, torch.Tensor]:
        shard = int(self.index.shard[position])
        spans = {
            c: (int(self.index.offset[c][position]), int(self.index.nbytes[c][position]))
            for c in self.payload
        }
        if not spans:
            return {}
        # One read covers the row's payload columns (they sit in one row group), each value
        # with the 4-byte length Parquet writes before it.
        low = min(offset - 4 for offset, _ in spans.values())
        high = max(offset + nbytes for offset, nbytes in spans.values())
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
        for c, (offset, nbytes) in spans.items():
            start = offset - low
            if int.from_bytes(view[start - 4 : start], "little") != nbytes:
                raise shard_error(
                    self.store.root,
                    self._shard(shard),
                    ValueError(f"{c} of a row is not at byte {offset} as its row index says"),
                )
            shape, dtype = self.index.layouts[self.index.layout[c][position]]
            row[c] = tensor(view[start : start + nbytes], shape, dtype)
        return row

    def _read_group(
        self, shard: int, group: int, rows: list[tuple[str, int]]
    ) -> dict[str, dict[str, torch.Tensor]]:
        columns = [*self.payload]
        try:
            with self._lock:
                parquet = self._parquet.get(shard)
            if parquet is None:
                parquet = pq.ParquetFile(self._file(shard))
                with self._lock:
                    self._parquet[shard] = parquet
                    while len(self._parquet) > OPEN_FILES:
                        self._parquet.popitem(last=False)
            table = parquet.read_row_group(group, columns=columns)
            meta = parquet.metadata.row_group(group)
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

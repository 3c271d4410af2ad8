"""Where each cached row lives: key -> (shard, row group, row) plus the byte range of its payload.

A committed cache (``cache_store``) gets one row-index file per set of committed shards,
``rows-<digest of the shard list>.parquet``, written at commit time (and built from the shards
on first use for caches written before it existed). For each key (a latent cache's content
hash with status "ok", a text cache's caption hash) it records the shard, row group and row,
and for each payload column (``latent`` and ``conditioning``
when present; or every ``<name>`` beside ``<name>_shape`` and
``<name>_dtype``) its shape, dtype, size and -- when the column chunk holds just that value --
the chunk's byte range and codec. New shards are written so that every row does
(``SHARD_WRITE_ARGS``: one row per row group, no dictionary): the chunk is one data page whose
(decompressed) content ends with the PLAIN-encoded value, preceded by its 4-byte
little-endian length. So a read fetches the row's payload and a few header bytes
(``cache_rows``); other layouts (older caches) fall back to reading the row's row group.

The file carries its row count and a SHA-256 of its content in the Parquet schema metadata: a
truncated or corrupt index is detected and rebuilt from the shards, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from st_ray.data.row_index import CHUNK_ROWS, RowIndex

READ_ROWS = CHUNK_ROWS  # rows decoded at once when loading an index file (its row groups)

ROWS_PREFIX = "rows-"
# Latent caches: key column and whether only status "ok" rows count; text caches.
KEY_COLUMNS = {"latents": ("content_hash", True), "text_embeds": ("caption_hash", False)}
OK = "ok"
# What the caching stage passes to Ray Data's write_parquet (and the feed benchmark to
# pyarrow): rows readable by byte range. Footers grow by ~1 KiB a row; only the index
# builder reads them.
SHARD_WRITE_ARGS = {"row_group_size": 1, "use_dictionary": False}
# Column-chunk codecs a direct read decodes (pyarrow.Codec names, lower case); index = code.
CODECS = ("UNCOMPRESSED", "ZSTD", "SNAPPY", "GZIP", "BROTLI", "LZ4_RAW")
_META_ROWS = b"st_ray.rows"
_META_SHA = b"st_ray.sha256"
_META_SHARDS = b"st_ray.shards"
_META_PAYLOAD = b"st_ray.payload"

log = logging.getLogger(__name__)


class ShardReadError(RuntimeError):
    """A committed shard is missing or unreadable: the run must stop, not skip rows."""


def shard_error(root: str, shard: str, error: BaseException) -> ShardReadError:
    return ShardReadError(
        f"cache {root}: shard {shard} is missing or unreadable ({type(error).__name__}: "
        f"{error}). Training stops rather than train on other data than planned; restore the "
        "file or rebuild the cache (jobs/cache.py, or delete the cache folder)"
    )


def payload_columns(kind: str, names: Sequence[str]) -> list[str]:
    """The byte columns a reader decodes: ``latent``, or each ``<n>`` with ``<n>_shape`` and
    ``<n>_dtype`` beside it (text encoders' outputs)."""
    if kind == "latents":  # with the paired conditioning images, when a dataset has them
        wanted = ["latent", "conditioning"]
        return [c for c in wanted if {c, f"{c}_shape", f"{c}_dtype"} <= set(names)]
    return [n for n in names if f"{n}_shape" in names and f"{n}_dtype" in names]


def index_name(shards: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps(list(shards)).encode()).hexdigest()[:16]
    return f"{ROWS_PREFIX}{digest}.parquet"


def build_entries(
    fs: pafs.FileSystem, root_path: str, kind: str, shards: Sequence[str], first_id: int = 0
) -> tuple[pa.Table, list[str]]:
    """Index rows of ``shards`` (ids counted from ``first_id``), read from their footers and
    small columns only. Returns (table, payload columns)."""
    key_column, status_filter = KEY_COLUMNS[kind]
    parts: list[pa.Table] = []
    payload: list[str] | None = None
    for shard_id, shard in enumerate(shards, start=first_id):
        try:
            with fs.open_input_file(f"{root_path}/{shard}") as handle:
                part, columns = _shard_entries(
                    pq.ParquetFile(handle), kind, key_column, status_filter, shard_id
                )
        except (OSError, pa.ArrowException) as error:
            raise shard_error(root_path, shard, error) from error
        if payload is not None and columns != payload:
            raise ShardReadError(
                f"cache {root_path}: shard {shard} holds columns {columns}, others {payload}"
            )
        payload = columns
        parts.append(part)
    payload = payload or []
    if not parts:
        return _schema(payload).empty_table(), payload
    return pa.concat_tables(parts), payload


def _schema(payload: Sequence[str]) -> pa.Schema:
    fields = [
        pa.field("key", pa.string()),
        pa.field("shard", pa.int32()),
        pa.field("row_group", pa.int32()),
        pa.field("row", pa.int32()),
    ]
    for c in payload:
        fields += [
            pa.field(f"{c}.offset", pa.int64()),
            pa.field(f"{c}.length", pa.int64()),
            pa.field(f"{c}.codec", pa.int8()),
            pa.field(f"{c}.nbytes", pa.int64()),
            pa.field(f"{c}.shape", pa.list_(pa.int64())),
            pa.field(f"{c}.dtype", pa.string()),
        ]
    return pa.schema(fields)


def _shard_entries(
    file: pq.ParquetFile, kind: str, key_column: str, status_filter: bool, shard_id: int
) -> tuple[pa.Table, list[str]]:
    """One shard's index rows, column by column (no Python object per row): the small
    columns as Arrow arrays, the payload chunks' byte ranges from the footer (one loop over
    its row groups, into numpy arrays)."""
    names = file.schema_arrow.names
    payload = payload_columns(kind, names)
    small = [key_column, *(["status"] if status_filter else [])]
    small += [f"{c}_{part}" for c in payload for part in ("shape", "dtype")]
    table = file.read(columns=small)
    metadata = file.metadata
    groups = metadata.num_row_groups
    per_group = np.array([metadata.row_group(g).num_rows for g in range(groups)], np.int64)
    if int(per_group.sum()) != table.num_rows:
        raise ShardReadError(f"row groups hold {per_group.sum()} rows, the table {table.num_rows}")
    group_of = np.repeat(np.arange(groups, dtype=np.int32), per_group)
    row_in_group = np.arange(table.num_rows, dtype=np.int64) - np.repeat(
        np.cumsum(per_group) - per_group, per_group
    )
    keep = np.ones(table.num_rows, bool)
    if status_filter:
        status = pc.equal(table.column("status"), OK)
        keep = np.asarray(status.fill_null(False).to_numpy(zero_copy_only=False), bool)
    columns: dict[str, Any] = {
        "key": table.column(key_column).filter(pa.array(keep)),
        "shard": np.full(int(keep.sum()), shard_id, np.int32),
        "row_group": group_of[keep],
        "row": row_in_group[keep].astype(np.int32),
    }
    leaf = {metadata.schema.column(j).path: j for j in range(metadata.num_columns)}
    for c in payload:
        offset, length, codec = _chunk_ranges(metadata, leaf[c], per_group)
        shapes = table.column(f"{c}_shape").combine_chunks().cast(pa.list_(pa.int64()))
        dtypes = table.column(f"{c}_dtype").combine_chunks().cast(pa.string())
        nbytes = _element_counts(shapes) * _itemsizes(dtypes)
        mask = pa.array(keep)
        columns[f"{c}.offset"] = np.repeat(offset, per_group)[keep]
        columns[f"{c}.length"] = np.repeat(length, per_group)[keep]
        columns[f"{c}.codec"] = np.repeat(codec, per_group)[keep]
        columns[f"{c}.nbytes"] = nbytes[keep]
        columns[f"{c}.shape"] = shapes.filter(mask)
        columns[f"{c}.dtype"] = dtypes.filter(mask)
    schema = _schema(payload)
    return pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema}, schema), payload


def _chunk_ranges(
    metadata: pq.FileMetaData, column: int, per_group: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row group: the payload column chunk's (offset, length, codec), offset and codec -1
    where the chunk is not one row's PLAIN value (a direct read cannot decode it)."""
    groups = len(per_group)
    offset = np.full(groups, -1, np.int64)
    length = np.zeros(groups, np.int64)
    codec = np.full(groups, -1, np.int8)
    for g in range(groups):
        chunk = metadata.row_group(g).column(column)
        length[g] = chunk.total_compressed_size
        if (
            per_group[g] == 1
            and chunk.compression in CODECS
            and not chunk.has_dictionary_page
            and chunk.physical_type == "BYTE_ARRAY"
        ):
            offset[g] = chunk.data_page_offset
            codec[g] = CODECS.index(chunk.compression)
    return offset, length, codec


def _element_counts(shapes: pa.ListArray) -> np.ndarray:
    """Product of each row's shape (1 for an empty shape, as for a scalar)."""
    sizes = shapes.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    values = shapes.flatten().to_numpy(zero_copy_only=False)
    counts = np.ones(len(shapes), np.int64)
    filled = sizes > 0
    if filled.any():
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])[filled]
        counts[filled] = np.multiply.reduceat(values.astype(np.int64), starts)
    return counts


def _itemsizes(dtypes: pa.StringArray) -> np.ndarray:
    """numpy itemsize of each row's dtype name (looked up once per distinct name); 0 where a
    row has none (a skipped image stores no payload)."""
    encoded = dtypes.dictionary_encode()
    names = encoded.dictionary.to_pylist()
    sizes = np.array([np.dtype(name).itemsize for name in names] + [0], np.int64)
    indices = encoded.indices.fill_null(len(names)).to_numpy(zero_copy_only=False)
    return sizes[indices.astype(np.int64)]


def _dedupe(table: pa.Table) -> pa.Table:
    """One row per key, the last one (a later commit wins)."""
    last = {k: i for i, k in enumerate(table.column("key").to_pylist())}
    if len(last) == table.num_rows:
        return table
    return table.take(pa.array(sorted(last.values()), pa.int64()))


def _checksum(table: pa.Table) -> str:
    # Canonical types, in batches of CHUNK_ROWS rows: a Parquet round trip changes neither
    # the values nor this digest, and a reader can check it a batch at a time.
    payload = [n[: -len(".offset")] for n in table.column_names if n.endswith(".offset")]
    canonical = table.replace_schema_metadata(None).cast(_schema(payload)).combine_chunks()
    return _Digest(canonical.schema).update(canonical.to_batches(CHUNK_ROWS)).hexdigest()


class _Digest:
    """SHA-256 of the Arrow IPC stream of a table's batches, without holding the stream."""

    def __init__(self, schema: pa.Schema) -> None:
        self._sha = hashlib.sha256()
        self.closed = False
        self._writer = pa.ipc.new_stream(pa.PythonFile(self, mode="w"), schema)

    def write(self, data: bytes) -> int:  # the IPC writer's sink
        self._sha.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def update(self, batches: Iterable[pa.RecordBatch]) -> _Digest:
        for batch in batches:
            self._writer.write_batch(batch)
        return self

    def hexdigest(self) -> str:
        self._writer.close()
        return self._sha.hexdigest()


def _rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """``batches`` cut into batches of exactly ``rows`` rows (the last one fewer)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            merged = pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
            yield merged.slice(0, rows)
            rest = merged.slice(rows)
            pending, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def encode(table: pa.Table, shards: Sequence[str], payload: Sequence[str]) -> bytes:
    """The index file: Parquet with row count, checksum, shards and payload in its metadata."""
    metadata = {
        _META_ROWS: str(table.num_rows).encode(),
        _META_SHA: _checksum(table).encode(),
        _META_SHARDS: json.dumps(list(shards)).encode(),
        _META_PAYLOAD: json.dumps(list(payload)).encode(),
    }
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(metadata), sink, row_group_size=CHUNK_ROWS)
    return sink.getvalue().to_pybytes()


def decode(data: bytes, shards: Sequence[str]) -> tuple[pa.Table, list[str]]:
    """The table of an index file. Raises ValueError when it is truncated, corrupt, or made
    for other shards."""
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"unreadable ({error})") from error
    meta = table.schema.metadata or {}
    payload = _check_meta(meta, table.num_rows, shards, table.column_names)
    if _checksum(table) != meta[_META_SHA].decode():
        raise ValueError("checksum mismatch")
    return table.replace_schema_metadata(None), payload


def _check_meta(
    meta: dict[bytes, bytes], rows: int, shards: Sequence[str], names: Sequence[str]
) -> list[str]:
    """The payload columns an index file's metadata names; ValueError when it does not
    describe this file (rows) or these shards, or comes from another version."""
    if not {_META_SHA, _META_ROWS, _META_SHARDS, _META_PAYLOAD} <= set(meta):
        raise ValueError("no checksum")
    if int(meta[_META_ROWS]) != rows:
        raise ValueError(f"{rows} rows, the file says {int(meta[_META_ROWS])}")
    if json.loads(meta[_META_SHARDS]) != list(shards):
        raise ValueError("made for other shards")
    payload = json.loads(meta[_META_PAYLOAD])
    if set(names) != set(_schema(payload).names):
        raise ValueError("written by another st_ray version")
    return payload


def update(
    fs: pafs.FileSystem,
    root_path: str,
    kind: str,
    shards: Sequence[str],
    previous: tuple[pa.Table, list[str], list[str]] | None = None,
) -> tuple[pa.Table, list[str]]:
    """The index of ``shards``: ``previous`` (table, its shards, payload) reused when its
    shards are a prefix of ``shards``, the rest read from the new shards."""
    if previous is not None and list(shards[: len(previous[1])]) == previous[1]:
        old, old_shards, old_payload = previous
        if len(old_shards) == len(shards):
            return old, old_payload
        new, payload = build_entries(
            fs, root_path, kind, shards[len(old_shards) :], len(old_shards)
        )
        if not old.num_rows:
            return _dedupe(new), payload
        if payload != old_payload:
            raise ShardReadError(
                f"cache {root_path}: new shards hold columns {payload}, older ones {old_payload}"
            )
        return _dedupe(pa.concat_tables([old, new])), payload
    table, payload = build_entries(fs, root_path, kind, shards)
    return _dedupe(table), payload


# --- the index file of a cache store (duck-typed: cache_store imports this module) ----------


def _read(store, shards: Sequence[str]) -> tuple[pa.Table, list[str]] | None:
    """The valid index file of ``shards``; None when absent; ValueError when it is bad."""
    path = f"{store.path}/{index_name(shards)}"
    try:
        data = store.fs.cat_file(path)
    except FileNotFoundError:
        return None
    return decode(data, shards)


def _scan(store, shards: Sequence[str]) -> RowIndex | None:
    """The valid index file of ``shards`` read into a ``RowIndex`` a batch at a time (the
    decoded table is never whole in memory); None when absent; ValueError when it is bad."""
    path = f"{store.path}/{index_name(shards)}"
    try:
        data = store.fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        file = pq.ParquetFile(pa.BufferReader(data))
        meta = file.schema_arrow.metadata or {}
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"unreadable ({error})") from error
    payload = _check_meta(meta, file.metadata.num_rows, shards, file.schema_arrow.names)
    schema = _schema(payload)
    digest = _Digest(schema)

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            raw = file.iter_batches(batch_size=READ_ROWS, use_threads=False)
            for batch in _rebatch(raw, CHUNK_ROWS):
                batch = pa.Table.from_batches([batch]).cast(schema).to_batches()[0]
                digest.update([batch])
                yield batch
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"unreadable ({error})") from error

    index = RowIndex.from_batches(shards, payload, file.metadata.num_rows, batches())
    if digest.hexdigest() != meta[_META_SHA].decode():
        raise ValueError("checksum mismatch")
    return index


def _write(store, table: pa.Table, shards: Sequence[str], payload: Sequence[str]) -> None:
    from st_ray import storage

    data = encode(table, shards, payload)
    storage.atomic_write_bytes(storage.join(store.root, index_name(shards)), data, store.s3)


def load(store, shards: Sequence[str]) -> RowIndex:
    """The row index of a committed cache. A missing one (caches older than row indexes) or a
    truncated/corrupt one is rebuilt from the shards and written back (best effort: a
    read-only cache still trains, rebuilding at each start)."""
    name = index_name(shards)
    found = None
    try:
        found = _scan(store, shards)
    except ValueError as problem:
        log.warning(
            "row index %s of %s is bad (%s); rebuilding it from the shards",
            name,
            store.root,
            problem,
        )
    if found is None:
        table, payload = update(store.pyarrow_filesystem(), store.path, store.kind, shards)
        try:
            _write(store, table, shards, payload)
        except OSError as error:
            log.warning("could not save the row index %s of %s: %s", name, store.root, error)
        found = RowIndex.from_table(shards, payload, table)
    return found


def commit(store, old_shards: Sequence[str], shards: Sequence[str]) -> None:
    """Write the index of ``shards`` (extending that of ``old_shards`` when valid) before the
    manifest that lists them is written."""
    try:
        current = _read(store, shards)
    except ValueError:
        current = None
    if current is not None:
        return
    previous = None
    try:
        found = _read(store, old_shards) if old_shards else None
    except ValueError:
        found = None
    if found is not None:
        previous = (found[0], list(old_shards), found[1])
    table, payload = update(store.pyarrow_filesystem(), store.path, store.kind, shards, previous)
    _write(store, table, shards, payload)


def remove_stale(store, shards: Sequence[str] | None) -> None:
    """Delete row-index files of other shard lists (an older commit, an interrupted one)."""
    keep = index_name(shards) if shards is not None else None
    for path in store.fs.glob(f"{store.path}/{ROWS_PREFIX}*.parquet"):
        if path.rsplit("/", 1)[-1] != keep:
            store.fs.rm(path)

"""The on-disk (or s3://) cache: Parquet shards plus a manifest that says which shards are real.

Layout of one cache folder::

    manifest.json          kind, settings fingerprint, committed shards, last summary
    shards/<run>/*.parquet written by Ray Data; only shards listed in the manifest count
    index-<id>.parquet     (latent caches) the dataset as of the last run: image -> hash,
                           bucket, captions; the manifest names the current one
    listing-<id>.parquet   (latent caches) each listed file's stamp and what caching made
                           of it (st_ray.data.listing); the manifest names the current one
    rows-<digest>.parquet  key -> shard, row group, row and payload byte ranges of the
                           committed shards (``cache_index``), written before the manifest

A run writes its shards first and commits them by rewriting the manifest last (an atomic
replace locally, a single PUT on S3). A run killed midway leaves shards that no manifest
lists; the next run ignores them and removes them.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from st_ray import storage
from st_ray.data import cache_index
from st_ray.storage import S3Settings

MANIFEST = "manifest.json"
INDEX_PREFIX = "index-"
LISTING_PREFIX = "listing-"
INDEX_GROUP_ROWS = 16384  # rows per row group of index files
FORMAT_VERSION = 1


class CacheMismatch(Exception):
    """A cache built with different settings than the current run asks for."""


def fingerprint_hash(settings: Mapping[str, Any]) -> str:
    canonical = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def describe_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(changed)


@dataclass
class Manifest:
    kind: str  # "latents" or "text_embeds"
    settings: dict[str, Any]
    shards: list[str] = field(default_factory=list)  # paths relative to the cache root
    rows: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    index: str | None = None  # file name of the current index (latent caches)
    listing: str | None = None  # file name of the current listing (latent caches)
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "kind": self.kind,
                "settings": self.settings,
                "fingerprint": fingerprint_hash(self.settings),
                "shards": self.shards,
                "rows": self.rows,
                "summary": self.summary,
                "index": self.index,
                "listing": self.listing,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
            default=str,
        )


class CacheStore:
    """One cache folder: read its manifest, check settings, commit new shards."""

    def __init__(self, root: str, kind: str, s3: S3Settings | None = None) -> None:
        self.root = root.rstrip("/")
        self.kind = kind
        self.s3 = s3
        self.fs, self.path = storage.filesystem(self.root, s3)

    def _p(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def read_manifest(self) -> Manifest | None:
        if not self.fs.exists(self._p(MANIFEST)):
            return None
        data = json.loads(self.fs.cat_file(self._p(MANIFEST)))
        if data.get("kind") != self.kind:
            raise CacheMismatch(
                f"{self.root} holds a '{data.get('kind')}' cache, not '{self.kind}'; give each "
                "cache its own folder"
            )
        return Manifest(
            kind=data["kind"],
            settings=data["settings"],
            shards=list(data.get("shards", [])),
            rows=int(data.get("rows", 0)),
            summary=data.get("summary", {}),
            index=data.get("index"),
            listing=data.get("listing"),
            version=int(data.get("version", FORMAT_VERSION)),
        )

    def open(self, settings: Mapping[str, Any], override: bool) -> Manifest:
        """The manifest to extend for ``settings``.

        A cache built with other settings is an error naming the difference, unless
        ``override`` (override_dataset_config) is set: then the old cache is discarded and
        rebuilt, so stale entries are never reused.
        """
        settings = json.loads(json.dumps(dict(settings), default=str))
        current = self.read_manifest()
        if current is not None and current.settings != settings:
            if not override:
                raise CacheMismatch(
                    f"cache {self.root} was built with different settings ("
                    f"{describe_difference(current.settings, settings)}); set "
                    "override_dataset_config to rebuild it, or use another cache folder"
                )
            self.clear()
            current = None
        self.remove_uncommitted(current)
        return current or Manifest(kind=self.kind, settings=settings)

    def pyarrow_filesystem(self):
        """The same storage as a pyarrow filesystem, for Ray Data's writers."""
        return storage.pyarrow_filesystem(self.root, self.s3)[0]

    def new_run_dir(self) -> tuple[str, str]:
        """A fresh shard folder for this run: (its path inside ``pyarrow_filesystem()``, its
        path relative to the cache root)."""
        relative = f"shards/{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        return self._p(relative), relative

    def shard_files(self, relative_dir: str) -> list[str]:
        base = self._p(relative_dir)
        if not self.fs.exists(base):
            return []
        files = [f for f in self.fs.find(base) if f.endswith(".parquet")]
        return sorted(f[len(self.path) + 1 :] for f in files)

    def commit(self, manifest: Manifest, new_shards: Iterable[str], new_rows: int) -> None:
        old_shards = list(manifest.shards)
        manifest.shards = [*manifest.shards, *new_shards]
        manifest.rows += new_rows
        cache_index.commit(self, old_shards, manifest.shards)
        storage.atomic_write_bytes(
            storage.join(self.root, MANIFEST), manifest.to_json().encode(), self.s3
        )
        cache_index.remove_stale(self, manifest.shards)

    def row_index(self, manifest: Manifest) -> cache_index.RowIndex:
        """Where each committed row lives (built from the shards when absent or bad)."""
        return cache_index.load(self, manifest.shards)

    def remove_uncommitted(self, manifest: Manifest | None) -> None:
        """Delete shards and index files no manifest names: leftovers of an interrupted run."""
        committed = set(manifest.shards if manifest else [])
        base = self._p("shards")
        if self.fs.exists(base):
            for path in self.fs.find(base):
                if path[len(self.path) + 1 :] not in committed:
                    self.fs.rm(path)
        current = {manifest.index, manifest.listing} if manifest else set()
        for prefix in (INDEX_PREFIX, LISTING_PREFIX):
            for path in self.fs.glob(self._p(f"{prefix}*.parquet")):
                if path.rsplit("/", 1)[-1] not in current:
                    self.fs.rm(path)
        cache_index.remove_stale(self, manifest.shards if manifest else None)

    def clear(self) -> None:
        for name in ("shards", MANIFEST):
            if self.fs.exists(self._p(name)):
                self.fs.rm(self._p(name), recursive=True)
        cache_index.remove_stale(self, None)
        for prefix in (INDEX_PREFIX, LISTING_PREFIX):
            for path in self.fs.glob(self._p(f"{prefix}*.parquet")):
                self.fs.rm(path)

    def read_columns(self, manifest: Manifest, columns: list[str]) -> pa.Table:
        """Selected columns of every committed shard (cheap: Parquet reads only those)."""
        return self.read_shards(manifest.shards, columns)

    def read_shards(self, shards: list[str], columns: list[str]) -> pa.Table:
        tables = []
        for shard in shards:
            with self.fs.open(self._p(shard), "rb") as handle:
                tables.append(pq.read_table(handle, columns=columns))
        if not tables:
            return pa.table({c: pa.array([], type=pa.string()) for c in columns})
        return pa.concat_tables(tables, promote_options="default")

    def write_index(self, table: pa.Table) -> str:
        """Write a new index file; it becomes current when the manifest naming it is committed."""
        return self._write_table(INDEX_PREFIX, table)

    def write_listing(self, table: pa.Table) -> str:
        """Write a new listing file; current once the manifest naming it is committed."""
        return self._write_table(LISTING_PREFIX, table)

    def _write_table(self, prefix: str, table: pa.Table) -> str:
        name = f"{prefix}{uuid.uuid4().hex[:12]}.parquet"
        sink = pa.BufferOutputStream()
        # Row groups of INDEX_GROUP_ROWS: a worker decodes it a group at a time.
        pq.write_table(table, sink, row_group_size=INDEX_GROUP_ROWS)
        storage.atomic_write_bytes(
            storage.join(self.root, name), sink.getvalue().to_pybytes(), self.s3
        )
        return name

    def read_listing(self, manifest: Manifest) -> pa.Table | None:
        """The current listing; None when there is none or it cannot be read (a listing only
        saves work: without it every file is read again)."""
        if not manifest.listing:
            return None
        try:
            with self.fs.open(self._p(manifest.listing), "rb") as handle:
                return pq.read_table(handle)
        except (OSError, pa.ArrowException):
            return None

    def read_index(self, manifest: Manifest) -> pa.Table | None:
        if not manifest.index:
            return None
        with self.fs.open(self._p(manifest.index), "rb") as handle:
            return pq.read_table(handle)

    def iter_index(
        self, manifest: Manifest, columns: list[str], batch_rows: int = 4096
    ) -> Iterator[pa.RecordBatch]:
        """The current index's ``columns`` (those it has) in record batches: a reader that
        keeps a compact form of each batch never holds the whole decoded table."""
        with self.fs.open(self._p(manifest.index), "rb") as handle:
            file = pq.ParquetFile(handle)
            present = [c for c in columns if c in file.schema_arrow.names]
            yield from file.iter_batches(batch_size=batch_rows, columns=present, use_threads=False)

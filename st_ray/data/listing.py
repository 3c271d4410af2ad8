"""What a latent cache remembers of the files it was built from, so a re-run whose files are
unchanged reads and hashes none of them.

Every cache run stores a listing beside its index: per discovered image, a key made of what
the listing says of the file without reading it (size and mtime locally, the ETag on S3; the
same for its caption file, and the captions the metadata gave) and what caching made of it
(content hash, status, captions). On the next run an image whose key is unchanged, whose
latent is still committed and whose dataset definition is unchanged is taken from the
listing; only the others go through the Ray Data pipeline (read, hash, decode, encode). With
nothing left, no Ray Data runs at all.

A file rewritten with the same size and modification time (or the same ETag) is not seen;
``scan_for_errors: true`` on the dataset ignores the listing and reads and hashes every file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from st_ray.data import conditioning
from st_ray.data.prepare import CACHED, OK

# Row values of the discovery schema that decide what caching makes of an image.
KEY_FIELDS = (
    "uri",
    "stamp",
    "caption_uri",
    "caption_stamp",
    "meta_caption",
    "meta_fallback_caption",
    "meta_width",
    "meta_height",
    "generated_caption",
)
# A skip that may not happen again (storage hiccup): always retried.
RETRIED = ("unreadable",)
COLUMNS = ("image_id", "key", "content_hash", "status", "captions")
FINGERPRINT = b"st_ray.listing_fingerprint"


def row_key(row: Mapping[str, Any]) -> str | None:
    """The key of a discovered row; None when the listing gave no stamp (never reused)."""
    if not row.get("stamp"):
        return None
    values = [row.get(name) for name in KEY_FIELDS]
    if row.get(conditioning.STAMPS) is not None:  # paired conditioning files (keys of
        # datasets without them stay as they were)
        values += [row.get(conditioning.URIS), row.get(conditioning.STAMPS)]
    return hashlib.sha256(json.dumps(values, default=str).encode()).hexdigest()[:32]


def fingerprint(entry_fields: Mapping[str, Any], caption_filters: Sequence[str]) -> str:
    """The dataset definition: any change (caption strategy, instance prompt, filters...)
    makes every stored row stale."""
    data = json.dumps([dict(entry_fields), list(caption_filters)], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:32]


@dataclass
class Split:
    """Discovered rows divided into those the stored listing answers and those to process."""

    known: list[dict[str, Any]] = field(default_factory=list)  # stored records
    todo: list[dict[str, Any]] = field(default_factory=list)  # discovery rows
    keys: dict[str, str | None] = field(default_factory=dict)  # image_id -> key, every row


def split_rows(
    rows: Iterable[Mapping[str, Any]],
    stored: pa.Table | None,
    current_fingerprint: str,
    cached: set[str],
    *,
    retry_skipped: bool = False,
) -> Split:
    """Rows whose key matches the stored listing (and, when usable, whose latent is still in
    ``cached``) are known; the rest are to do. ``retry_skipped``: skipped rows are processed
    again (delete_problematic_images / delete_unwanted_images act on them)."""
    split = Split()
    previous: dict[str, dict[str, Any]] = {}
    if stored is not None and stored_fingerprint(stored) == current_fingerprint:
        previous = {r["image_id"]: r for r in stored.to_pylist()}
    for row in rows:
        key = row_key(row)
        split.keys[row["image_id"]] = key
        record = previous.get(row["image_id"])
        if key is not None and record is not None and record["key"] == key:
            usable = record["status"] in (OK, CACHED)
            if usable and record["content_hash"] in cached:
                split.known.append({**record, "status": CACHED})
                continue
            if not usable and not retry_skipped and record["status"] not in RETRIED:
                split.known.append(record)
                continue
        split.todo.append(dict(row))
    return split


def run_table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Known records in the shape of a cache run's light columns (status, hash, captions)."""
    return pa.table(
        {
            "image_id": pa.array([r["image_id"] for r in records], pa.string()),
            "content_hash": pa.array([r["content_hash"] for r in records], pa.string()),
            "status": pa.array([r["status"] for r in records], pa.string()),
            "captions": pa.array(
                [list(r["captions"] or []) for r in records], pa.list_(pa.string())
            ),
        }
    )


def listing_table(
    table: pa.Table, keys: Mapping[str, str | None], current_fingerprint: str
) -> pa.Table:
    """The listing to store after a run: every row of ``table`` (known and newly processed,
    run_table's columns) with its key."""
    rows = table.select(["image_id", "content_hash", "status", "captions"]).to_pylist()
    out = pa.table(
        {
            "image_id": pa.array([r["image_id"] for r in rows], pa.string()),
            "key": pa.array([keys.get(r["image_id"]) for r in rows], pa.string()),
            "content_hash": pa.array([r["content_hash"] for r in rows], pa.string()),
            "status": pa.array(
                [CACHED if r["status"] == OK else r["status"] for r in rows], pa.string()
            ),
            "captions": pa.array([list(r["captions"] or []) for r in rows], pa.list_(pa.string())),
        }
    )
    return out.replace_schema_metadata({FINGERPRINT: current_fingerprint.encode()})


def stored_fingerprint(table: pa.Table) -> str | None:
    value = (table.schema.metadata or {}).get(FINGERPRINT)
    return value.decode() if value else None


def usable_ids(table: pa.Table | None) -> set[str]:
    if table is None:
        return set()
    return {
        r["image_id"]
        for r in table.select(["image_id", "status"]).to_pylist()
        if r["status"] in (OK, CACHED)
    }

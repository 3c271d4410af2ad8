"""Discovery through metadata tables: a parquet / JSON Lines table joined with the listed files
(``metadata_backend: parquet``), and CSV URL lists (type ``csv``)."""

from __future__ import annotations

import io
import logging
import math
import os
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from st_ray import storage
from st_ray.config.datasets import DatasetEntry, resolve_local
from st_ray.data.dataset_files import caption_index, file_values
from st_ray.data.discovery_rows import (
    DatasetNotFoundError,
    DiscoveryError,
    ListedFile,
    file_stamp,
    integer_value,
    is_image_name,
    make_row,
    text_value,
)
from st_ray.storage import S3Settings

log = logging.getLogger(__name__)


def read_table(
    entry: DatasetEntry, root: str, s3: S3Settings | None, base_dir: Path | None
) -> list[dict[str, Any]]:
    block = entry["parquet"] or {}
    path = block.get("path")
    if not path:
        raise DiscoveryError(
            f"dataset '{entry.id}': metadata_backend 'parquet' needs \"parquet\": {{\"path\": ...}}"
        )
    uri = _locate_table(entry, str(path), root, s3, base_dir)
    try:
        data = storage.read_bytes(uri, s3)
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"dataset '{entry.id}': parquet table {uri} not found") from err
    return _decode_table(entry.id, uri, data)


def _locate_table(
    entry: DatasetEntry, path: str, root: str, s3: S3Settings | None, base_dir: Path | None
) -> str:
    """Absolute URIs as given; a relative path from the working directory (or the config's
    folder) when that file exists, else inside the dataset root (for S3 also the bucket root,
    where SimpleTuner looks)."""
    if storage.is_remote(path):
        return path
    if os.path.isabs(path):
        return path
    local = resolve_local(path, base_dir)
    if local.is_file():
        return str(local.absolute())
    candidates = [storage.join(root, path)]
    if entry.backend == "aws":
        candidates.append(f"s3://{entry['aws_bucket_name']}/{path.lstrip('/')}")
    for candidate in dict.fromkeys(candidates):
        if storage.exists(candidate, s3):
            return candidate
    raise DatasetNotFoundError(
        f"dataset '{entry.id}': parquet table '{path}' not found (looked in the working "
        f"directory and {', '.join(dict.fromkeys(candidates))})"
    )


def _decode_table(dataset_id: str, uri: str, data: bytes) -> list[dict[str, Any]]:
    name = uri.lower()
    try:
        if name.endswith((".jsonl", ".json")):
            import pandas as pd

            frame = pd.read_json(io.BytesIO(data), lines=name.endswith(".jsonl"))
            return frame.to_dict("records")
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    except Exception as err:
        raise DiscoveryError(f"dataset '{dataset_id}': cannot read table {uri}: {err}") from err


def parquet_rows(
    entry: DatasetEntry,
    files: list[ListedFile],
    table: list[dict[str, Any]],
    options: Mapping[str, Any],
) -> list[dict[str, Any]]:
    block = entry["parquet"] or {}
    id_column = block.get("filename_column") or options.get("parquet_filename_column") or "id"
    caption_column = (
        block.get("caption_column") or options.get("parquet_caption_column") or "description"
    )
    fallback_column = block.get("fallback_caption_column")
    width_column, height_column = block.get("width_column"), block.get("height_column")
    with_extension = bool(block.get("identifier_includes_extension"))
    columns = set(table[0]) if table else set()
    _require_column(entry, id_column, columns, "parquet.filename_column")
    if fallback_column:
        _require_column(entry, fallback_column, columns, "parquet.fallback_caption_column")
    if entry["caption_strategy"] == "parquet":
        _require_column(entry, caption_column, columns, "parquet.caption_column")

    by_id: dict[str, dict[str, Any]] = {}
    for record in table:
        key = _identifier(record.get(id_column))
        if key is not None:
            by_id[_table_key(key, with_extension)] = record

    captions = caption_index(files)
    rows, matched = [], set()
    for f in files:
        if not is_image_name(f.rel):
            continue
        key, record = _match(f.rel, by_id, with_extension)
        if record is None:
            continue
        matched.add(key)
        rows.append(
            make_row(
                entry.id,
                f.rel,
                f.uri,
                **file_values(f, captions),
                meta_caption=text_value(record.get(caption_column)),
                meta_fallback_caption=text_value(record.get(fallback_column))
                if fallback_column
                else None,
                meta_width=integer_value(record.get(width_column)) if width_column else None,
                meta_height=integer_value(record.get(height_column)) if height_column else None,
            )
        )
    unlisted = sum(1 for f in files if is_image_name(f.rel)) - len(rows)
    if unlisted or len(matched) < len(by_id):
        log.info(
            "dataset '%s': %d image files have no row in the parquet table and %d rows have "
            "no image file; both are left out",
            entry.id,
            unlisted,
            len(by_id) - len(matched),
        )
    return rows


def _require_column(entry: DatasetEntry, column: str, columns: set[str], field: str) -> None:
    if column not in columns:
        raise DiscoveryError(
            f"dataset '{entry.id}': {field} '{column}' is not a column of the table "
            f"(columns: {', '.join(sorted(columns)) or 'none'})"
        )


def _identifier(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip().replace("\\", "/")
    while text.startswith(("./", "/")):
        text = text[2:] if text.startswith("./") else text[1:]
    return text or None


def _table_key(identifier: str, with_extension: bool) -> str:
    if with_extension:
        return identifier
    # Bare ids are file stems. Ids that still carry an image extension (a common slip with
    # identifier_includes_extension left false) are reduced to their stem too.
    name = posixpath.basename(identifier)
    return posixpath.splitext(name)[0] if is_image_name(name) else identifier


def _match(
    rel: str, by_id: Mapping[str, dict[str, Any]], with_extension: bool
) -> tuple[str, dict[str, Any] | None]:
    name = posixpath.basename(rel)
    keys = (rel, name) if with_extension else (posixpath.splitext(name)[0],)
    for key in keys:
        if key in by_id:
            return key, by_id[key]
    return keys[0], None


def csv_rows(
    entry: DatasetEntry, s3: S3Settings | None, base_dir: Path | None
) -> list[dict[str, Any]]:
    import pandas as pd

    csv_file = entry["csv_file"]
    if not csv_file:
        raise DiscoveryError(f"dataset '{entry.id}': 'csv_file' is required for type 'csv'")
    settings = s3 if s3 is not None else S3Settings.from_entry(entry)
    remote = storage.is_remote(csv_file)
    location = csv_file if remote else str(resolve_local(csv_file, base_dir).absolute())
    try:
        data = storage.read_bytes(location, settings)
    except (FileNotFoundError, IsADirectoryError) as err:
        raise DatasetNotFoundError(
            f"dataset '{entry.id}': csv_file '{location}' not found"
        ) from err
    frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    columns = set(frame.columns)
    url_column = entry["csv_url_column"] or "url"
    caption_column = entry["csv_caption_column"] or "caption"
    _require_column(entry, url_column, columns, "csv_url_column")
    if entry["caption_strategy"] == "csv":
        _require_column(entry, caption_column, columns, "csv_caption_column")
    folder = None if remote else os.path.dirname(location)

    # One row per distinct location; the last line wins, as in SimpleTuner.
    captions: dict[str, str | None] = {}
    for record in frame.to_dict("records"):
        url = str(record[url_column]).strip()
        if url:
            captions[url] = text_value(record.get(caption_column))
    rows = []
    for url, caption in captions.items():
        uri, size, stamp = _csv_location(entry.id, url, folder)
        image_id = url[len("file://") :] if url.startswith("file://") else url
        rows.append(
            make_row(entry.id, image_id, uri, size_bytes=size, stamp=stamp, meta_caption=caption)
        )
    return rows


def _csv_location(
    dataset_id: str, url: str, folder: str | None
) -> tuple[str, int | None, str | None]:
    """(URI, size, stamp); local files only are stat'ed here (an s3:// row is not listed)."""
    kind = storage.scheme(url)
    if kind in ("http", "https"):
        raise DiscoveryError(
            f"dataset '{dataset_id}': csv row '{url}' is an http URL; st_ray does not download "
            "images. Download them first and list local paths (or s3:// URIs) in the CSV."
        )
    if kind not in ("", "file"):
        return url, None, None
    path = storage.local_path(url) if kind == "file" or os.path.isabs(url) else None
    if path is None:
        here = os.path.abspath(url)
        path = here if os.path.exists(here) or folder is None else os.path.join(folder, url)
    try:
        info = os.stat(path)
    except OSError:
        return path, None, None  # reading it later reports the file as unreadable
    return path, info.st_size, file_stamp(info.st_size, info.st_mtime_ns)

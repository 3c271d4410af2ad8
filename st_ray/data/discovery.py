"""Finding the candidate images of a dataset entry, one row per image file.

Rows follow the discovery schema (see ``ROW_KEYS``). Discovery never opens images: local
folders are walked once, S3 prefixes are listed with paginated LISTs (sizes come from the
listing, no per-object request), and metadata tables (parquet, CSV, Hugging Face datasets) are
read once. Bytes are fetched later, per row, by ``read_image_bytes``.

Backends, as in SimpleTuner:
- ``local``: every image under ``instance_data_dir``, recursively; a same-stem ``.txt`` in the
  same folder is the caption file.
- ``aws``: every image under ``aws_bucket_name``/``aws_data_prefix`` (SimpleTuner ignores
  ``instance_data_dir`` for S3).
- ``metadata_backend: parquet`` on either: the listed files joined with the table's rows by
  ``filename_column`` (the file stem, or its relative path when
  ``identifier_includes_extension``). Files without a row are left out, as in SimpleTuner.
- ``csv``: one row per distinct ``csv_url_column`` value (local paths or s3:// URIs; http URLs
  are refused: nothing is downloaded).
- ``huggingface``: a ``datasets`` dataset already on disk; rows are ``hf://`` URIs.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from st_ray import storage
from st_ray.config.datasets import DatasetEntry, resolve_local
from st_ray.storage import S3Settings

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"})
CAPTION_EXTENSION = "txt"
HF_SCHEME = "hf"
ROW_KEYS = (
    "dataset_id",
    "image_id",
    "uri",
    "size_bytes",
    "caption_uri",
    "meta_caption",
    "meta_fallback_caption",
    "meta_width",
    "meta_height",
    "stamp",  # what identifies the file's version without reading it: see file_stamp
    "caption_stamp",
)


class DiscoveryError(RuntimeError):
    """A dataset cannot be listed as configured; the message names the dataset."""


class DatasetNotFoundError(DiscoveryError, FileNotFoundError):
    """The folder, bucket, prefix or table a dataset points at does not exist."""


@dataclass(frozen=True)
class _File:
    """One listed file: path relative to the dataset root, full URI, size and stamp from the
    listing."""

    rel: str
    uri: str
    size: int | None
    stamp: str | None = None


def file_stamp(size: int | None, modified: int | str | None = None, etag: str | None = None) -> str:
    """A file's version as its listing tells it, no read needed: the ETag on S3 (it changes
    with the content), else size and modification time (local files)."""
    if etag:
        return f"etag:{etag.strip(chr(34))}"
    return f"{size}:{modified}"


def discover(
    entry: DatasetEntry,
    s3: S3Settings | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Rows for every candidate image of ``entry``, sorted by ``image_id``.

    ``s3`` reaches the dataset's bucket (unset: the entry's ``aws_*`` fields, then the AWS
    environment). ``options`` (run options) supply ``parquet_filename_column`` /
    ``parquet_caption_column`` fallbacks; ``base_dir`` (the config's folder) resolves relative
    local paths that do not exist from the working directory.
    """
    if not entry.holds_images:
        raise DiscoveryError(
            f"dataset '{entry.id}': only image datasets are discovered, not '{entry.dataset_type}'"
        )
    run = options or {}
    if entry.backend == "huggingface":
        rows = _huggingface_rows(entry, base_dir)
    elif entry.backend == "csv":
        rows = _csv_rows(entry, s3, base_dir)
    elif entry.backend in ("local", "aws"):
        settings = s3 if s3 is not None else S3Settings.from_entry(entry)
        root, files = _list(entry, settings, base_dir)
        if entry["metadata_backend"] == "parquet":
            table = _read_table(entry, root, settings, base_dir)
            rows = _parquet_rows(entry, files, table, run)
        else:
            rows = _listing_rows(entry.id, files)
    else:
        raise DiscoveryError(
            f"dataset '{entry.id}': storage type '{entry.backend}' is not supported"
        )
    return sorted(rows, key=lambda row: row["image_id"])


def _row(dataset_id: str, image_id: str, uri: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(dataset_id=dataset_id, image_id=image_id, uri=uri, **values)
    return row


def _extension(name: str) -> str:
    return posixpath.splitext(name)[1][1:].lower()


def is_image_name(name: str) -> bool:
    return _extension(name) in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------------------------
# Listing local folders and S3 prefixes
# ---------------------------------------------------------------------------------------------


def _list(
    entry: DatasetEntry, s3: S3Settings | None, base_dir: Path | None
) -> tuple[str, list[_File]]:
    """The dataset root URI and every file under it (captions included)."""
    if entry.backend == "aws":
        bucket = entry["aws_bucket_name"]
        if not bucket:
            raise DiscoveryError(f"dataset '{entry.id}': 'aws_bucket_name' is required")
        prefix = str(entry["aws_data_prefix"] or "").strip("/")
        root = f"s3://{bucket}/{prefix}".rstrip("/")
        return root, _list_s3(entry.id, root, s3)
    folder = entry["instance_data_dir"]
    if not folder:
        raise DiscoveryError(f"dataset '{entry.id}': 'instance_data_dir' is required")
    if storage.is_remote(folder):
        raise DiscoveryError(
            f"dataset '{entry.id}': instance_data_dir '{folder}' is remote; use type 'aws' with "
            "aws_bucket_name and aws_data_prefix for S3 data"
        )
    root = os.path.abspath(resolve_local(folder, base_dir))
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"dataset '{entry.id}': folder '{root}' does not exist")
    return root, list(_walk(root))


def _walk(root: str) -> Iterator[_File]:
    """Every file under ``root``; symlinked folders are followed once (no cycles)."""
    seen: set[str] = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        with os.scandir(folder) as entries:
            for item in entries:
                if item.is_dir():
                    pending.append(item.path)
                elif item.is_file():
                    rel = Path(os.path.relpath(item.path, root)).as_posix()
                    info = item.stat()
                    size = info.st_size if is_image_name(item.name) else None
                    yield _File(rel, item.path, size, file_stamp(info.st_size, info.st_mtime_ns))


def _list_s3(dataset_id: str, root: str, s3: S3Settings | None) -> list[_File]:
    fs, path = storage.filesystem(root, s3)
    bucket = path.split("/", 1)[0]
    try:
        # One paginated LIST (no delimiter) of everything under the prefix.
        found = fs.find(path, detail=True)
    except FileNotFoundError as err:
        raise DatasetNotFoundError(
            f"dataset '{dataset_id}': bucket '{bucket}' does not exist ({root})"
        ) from err
    except Exception as err:
        raise DiscoveryError(f"dataset '{dataset_id}': cannot list {root}: {err}") from err
    if not found:
        raise DatasetNotFoundError(f"dataset '{dataset_id}': no objects under {root}")
    start = len(path) + 1
    return [
        _File(
            name[start:],
            f"s3://{name}",
            info.get("size"),
            file_stamp(info.get("size"), str(info.get("LastModified")), info.get("ETag")),
        )
        for name, info in found.items()
        if info.get("type", "file") == "file" and len(name) > start
    ]


def _listing_rows(dataset_id: str, files: list[_File]) -> list[dict[str, Any]]:
    captions = _caption_index(files)
    return [
        _row(dataset_id, f.rel, f.uri, **_file_values(f, captions))
        for f in files
        if is_image_name(f.rel)
    ]


def _caption_index(files: list[_File]) -> dict[str, _File]:
    """Caption file by relative path without extension (same folder, same stem)."""
    return {
        posixpath.splitext(f.rel)[0]: f for f in files if _extension(f.rel) == CAPTION_EXTENSION
    }


def _file_values(image: _File, captions: Mapping[str, _File]) -> dict[str, Any]:
    """The row values an image file and its caption file (if any) give."""
    caption = captions.get(posixpath.splitext(image.rel)[0])
    return {
        "size_bytes": image.size,
        "stamp": image.stamp,
        "caption_uri": caption.uri if caption else None,
        "caption_stamp": caption.stamp if caption else None,
    }


# ---------------------------------------------------------------------------------------------
# Parquet / JSON Lines metadata
# ---------------------------------------------------------------------------------------------


def _read_table(
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


def _parquet_rows(
    entry: DatasetEntry,
    files: list[_File],
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

    captions = _caption_index(files)
    rows, matched = [], set()
    for f in files:
        if not is_image_name(f.rel):
            continue
        key, record = _match(f.rel, by_id, with_extension)
        if record is None:
            continue
        matched.add(key)
        rows.append(
            _row(
                entry.id,
                f.rel,
                f.uri,
                **_file_values(f, captions),
                meta_caption=_text(record.get(caption_column)),
                meta_fallback_caption=_text(record.get(fallback_column))
                if fallback_column
                else None,
                meta_width=_integer(record.get(width_column)) if width_column else None,
                meta_height=_integer(record.get(height_column)) if height_column else None,
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


def _text(value: Any) -> str | None:
    """A caption cell as text: None for null/NaN/blank; several captions (a list cell) become
    one caption per line, like a multi-line caption file."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, list | tuple):
        parts = [t for t in (_text(v) for v in value) if t]
        return "\n".join(parts) or None
    if hasattr(value, "tolist") and not isinstance(value, str):
        return _text(value.tolist())
    text = str(value).strip()
    return text or None


def _integer(value: Any) -> int | None:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# CSV URL lists
# ---------------------------------------------------------------------------------------------


def _csv_rows(
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
            captions[url] = _text(record.get(caption_column))
    rows = []
    for url, caption in captions.items():
        uri, size, stamp = _csv_location(entry.id, url, folder)
        image_id = url[len("file://") :] if url.startswith("file://") else url
        rows.append(
            _row(entry.id, image_id, uri, size_bytes=size, stamp=stamp, meta_caption=caption)
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


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets on disk
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _HubColumns:
    split: str
    image: str
    caption: str | None
    fallback: str | None
    width: str | None
    height: str | None
    file_extension: str


def _hub_columns(entry: DatasetEntry) -> _HubColumns:
    """Split and image column: the top-level field wins when set to a non-default value;
    caption columns: the huggingface block wins (as in SimpleTuner's code)."""
    block = entry["huggingface"] or {}
    top = entry.fields

    def pick(name: str, default: Any) -> Any:
        if top.get(name) not in (None, default):
            return top[name]
        return block.get(name) or top.get(name) or default

    def pick_block(name: str, default: Any) -> Any:
        if block.get(name) not in (None, default):
            return block[name]
        return top.get(name) or default

    return _HubColumns(
        split=pick("split", "train"),
        image=pick("image_column", "image"),
        caption=pick_block("caption_column", "caption"),
        fallback=pick_block("fallback_caption_column", None),
        width=block.get("width_column"),
        height=block.get("height_column"),
        file_extension=str(block.get("file_extension") or "jpg").lstrip("."),
    )


def _huggingface_rows(entry: DatasetEntry, base_dir: Path | None) -> list[dict[str, Any]]:
    block = entry["huggingface"] or {}
    name = entry["dataset_name"] or block.get("dataset_name")
    if not name:
        raise DiscoveryError(f"dataset '{entry.id}': 'dataset_name' is required")
    folder = os.path.abspath(resolve_local(str(name), base_dir))
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(
            f"dataset '{entry.id}': Hugging Face dataset '{name}' is not a folder on disk "
            f"({folder}). st_ray does not download datasets: save it with "
            "Dataset.save_to_disk (or download the repository) and set dataset_name to the folder"
        )
    cols = _hub_columns(entry)
    try:
        dataset = _load_hf(folder, cols.split)
    except DiscoveryError as err:
        raise DiscoveryError(f"dataset '{entry.id}': {err}") from err
    except Exception as err:
        raise DiscoveryError(f"dataset '{entry.id}': cannot load {folder}: {err}") from err
    present = set(dataset.column_names)
    if cols.image not in present:
        raise DiscoveryError(
            f"dataset '{entry.id}': image column '{cols.image}' is not in {folder} "
            f"(columns: {', '.join(sorted(present))})"
        )
    wanted = [c for c in (cols.caption, cols.fallback, cols.width, cols.height) if c]
    tops = sorted({c.split(".")[0] for c in wanted} & present)
    # Only the metadata columns are read here; image bytes stay on disk until needed.
    table = dataset.select_columns(tops).to_dict() if tops else {}

    def cell(column: str | None, index: int) -> Any:
        if not column or column.split(".")[0] not in table:
            return None
        head, *rest = column.split(".")
        value = table[head][index]
        for part in rest:
            value = value.get(part) if isinstance(value, Mapping) else None
        return value

    query = urlencode({"split": cols.split, "column": cols.image})
    base = f"{HF_SCHEME}://{quote(folder)}?{query}"
    return [
        _row(
            entry.id,
            f"{index}.{cols.file_extension}",
            f"{base}#{index}",
            meta_caption=_text(cell(cols.caption, index)),
            meta_fallback_caption=_text(cell(cols.fallback, index)),
            meta_width=_integer(cell(cols.width, index)),
            meta_height=_integer(cell(cols.height, index)),
        )
        for index in range(len(dataset))
    ]


def _load_hf(folder: str, split: str) -> Any:
    """A saved dataset (``save_to_disk``) or a local folder ``load_dataset`` understands
    (parquet/CSV/JSON files, an image folder, a downloaded Hub repository)."""
    import datasets

    markers = ("dataset_dict.json", "state.json")
    if not any(os.path.exists(os.path.join(folder, m)) for m in markers):
        return datasets.load_dataset(folder, split=split)
    loaded = datasets.load_from_disk(folder)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DiscoveryError(
                f"split '{split}' is not in {folder} (splits: {', '.join(loaded)})"
            )
        return loaded[split]
    return loaded


@functools.lru_cache(maxsize=8)
def _hf_image_column(folder: str, split: str, column: str) -> Any:
    """The dataset reduced to its image column, with images left undecoded (raw bytes)."""
    import datasets

    dataset = _load_hf(folder, split).select_columns([column])
    if isinstance(dataset.features[column], datasets.Image):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def parse_hf_uri(uri: str) -> tuple[str, str, str, int]:
    """(folder, split, image column, row index) of an ``hf://`` row URI."""
    parts = urlsplit(uri)
    if parts.scheme != HF_SCHEME or not parts.fragment.isdigit():
        raise ValueError(f"not an hf://<folder>?split=..&column=..#<index> URI: {uri!r}")
    query = parse_qs(parts.query)
    folder = unquote(parts.netloc + parts.path)
    return folder, query["split"][0], query["column"][0], int(parts.fragment)


def read_image_bytes(row: Mapping[str, Any], s3: S3Settings | None = None) -> bytes:
    """The encoded image of a discovered row: a local file, an s3:// object (one GET) or an
    image cell of a Hugging Face dataset on disk."""
    uri = str(row["uri"])
    kind = storage.scheme(uri)
    if kind == HF_SCHEME:
        return _hf_image_bytes(*parse_hf_uri(uri))
    if kind in ("http", "https"):
        raise DiscoveryError(f"{uri}: http URLs are not read (no downloads)")
    return storage.read_bytes(uri, s3)


def _hf_image_bytes(folder: str, split: str, column: str, index: int) -> bytes:
    value = _hf_image_column(folder, split, column)[index][column]
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str) and value:
        path = value if os.path.isabs(value) else os.path.join(folder, value)
        with open(path, "rb") as handle:
            return handle.read()
    if hasattr(value, "save"):  # a decoded PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    raise DiscoveryError(f"{folder} row {index}: column '{column}' holds no image ({value!r})")

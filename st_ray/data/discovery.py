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

Where each piece lives: the row schema, errors and file-name rules in ``discovery_rows``;
folders and S3 prefixes in ``dataset_files``; parquet / JSON Lines and CSV in
``metadata_tables``; Hugging Face datasets in ``hf_datasets``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from st_ray import storage
from st_ray.config.datasets import DatasetEntry
from st_ray.data.dataset_files import list_files, listing_rows
from st_ray.data.discovery_rows import DiscoveryError, ignored_count, is_video_name
from st_ray.data.hf_datasets import HF_SCHEME, hf_image_bytes, huggingface_rows, parse_hf_uri
from st_ray.data.metadata_tables import csv_rows, parquet_rows, read_table
from st_ray.storage import S3Settings


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
    return discover_counted(entry, s3, options=options, base_dir=base_dir)[0]


def discover_counted(
    entry: DatasetEntry,
    s3: S3Settings | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """``discover``'s rows, and how many listed files were ignored for their extension
    (folders and S3 prefixes; table-driven backends list no other files)."""
    ignored = 0
    if not (entry.holds_images or entry.dataset_type == "conditioning"):
        raise DiscoveryError(
            f"dataset '{entry.id}': only image and conditioning datasets are discovered, not "
            f"'{entry.dataset_type}'"
        )
    run = options or {}
    if entry.backend == "huggingface":
        rows = huggingface_rows(entry, base_dir)
    elif entry.backend == "csv":
        rows = csv_rows(entry, s3, base_dir)
    elif entry.backend in ("local", "aws"):
        settings = s3 if s3 is not None else S3Settings.from_entry(entry)
        root, files = list_files(entry, settings, base_dir)
        if entry.is_video:
            if entry["metadata_backend"] == "parquet":
                raise DiscoveryError(
                    f"dataset '{entry.id}': video datasets are listed from their folder; "
                    "metadata_backend 'parquet' is not implemented for video yet"
                )
            return sorted(listing_rows(entry.id, files, is_video_name), key=_by_id), (
                ignored_count(files, is_video_name)
            )
        ignored = ignored_count(files)
        if entry["metadata_backend"] == "parquet":
            table = read_table(entry, root, settings, base_dir)
            rows = parquet_rows(entry, files, table, run)
        else:
            rows = listing_rows(entry.id, files)
    else:
        raise DiscoveryError(
            f"dataset '{entry.id}': storage type '{entry.backend}' is not supported"
        )
    return sorted(rows, key=_by_id), ignored


def _by_id(row: Mapping[str, Any]) -> str:
    return row["image_id"]


def read_image_bytes(row: Mapping[str, Any], s3: S3Settings | None = None) -> bytes:
    """The encoded image of a discovered row: a local file, an s3:// object (one GET) or an
    image cell of a Hugging Face dataset on disk."""
    uri = str(row["uri"])
    kind = storage.scheme(uri)
    if kind == HF_SCHEME:
        return hf_image_bytes(*parse_hf_uri(uri))
    if kind in ("http", "https"):
        raise DiscoveryError(f"{uri}: http URLs are not read (no downloads)")
    return storage.read_bytes(uri, s3)

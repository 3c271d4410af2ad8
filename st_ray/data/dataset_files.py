"""Listing a dataset's own files: local folders walked once, S3 prefixes with paginated LISTs
(sizes and stamps come from the listing, no per-object request); one discovery row per image,
with its same-stem ``.txt`` caption sidecar."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from st_ray import storage
from st_ray.config.datasets import DatasetEntry, resolve_local
from st_ray.data.discovery_rows import (
    CAPTION_EXTENSION,
    DatasetNotFoundError,
    DiscoveryError,
    ListedFile,
    file_stamp,
    is_image_name,
    is_video_name,
    make_row,
    name_extension,
)
from st_ray.storage import S3Settings


def list_files(
    entry: DatasetEntry, s3: S3Settings | None, base_dir: Path | None
) -> tuple[str, list[ListedFile]]:
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


def _walk(root: str) -> Iterator[ListedFile]:
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
                    sample = is_image_name(item.name) or is_video_name(item.name)
                    size = info.st_size if sample else None
                    yield ListedFile(
                        rel, item.path, size, file_stamp(info.st_size, info.st_mtime_ns)
                    )


def _list_s3(dataset_id: str, root: str, s3: S3Settings | None) -> list[ListedFile]:
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
        ListedFile(
            name[start:],
            f"s3://{name}",
            info.get("size"),
            file_stamp(info.get("size"), str(info.get("LastModified")), info.get("ETag")),
        )
        for name, info in found.items()
        if info.get("type", "file") == "file" and len(name) > start
    ]


def listing_rows(
    dataset_id: str, files: list[ListedFile], is_sample: Callable[[str], bool] = is_image_name
) -> list[dict[str, Any]]:
    """One row per sample file (an image; a clip for a video dataset) with its caption."""
    captions = caption_index(files)
    return [
        make_row(dataset_id, f.rel, f.uri, **file_values(f, captions))
        for f in files
        if is_sample(f.rel)
    ]


def caption_index(files: list[ListedFile]) -> dict[str, ListedFile]:
    """Caption file by relative path without extension (same folder, same stem)."""
    return {
        posixpath.splitext(f.rel)[0]: f for f in files if name_extension(f.rel) == CAPTION_EXTENSION
    }


def file_values(image: ListedFile, captions: Mapping[str, ListedFile]) -> dict[str, Any]:
    """The row values an image file and its caption file (if any) give."""
    caption = captions.get(posixpath.splitext(image.rel)[0])
    return {
        "size_bytes": image.size,
        "stamp": image.stamp,
        "caption_uri": caption.uri if caption else None,
        "caption_stamp": caption.stamp if caption else None,
    }

"""The discovery row schema (``ROW_KEYS``), its errors, and the file-name rules every backend
shares: which files are images, which are caption sidecars, how a listed file's version is
stamped, how table cells become row values. Discovery itself: ``st_ray.data.discovery``."""

from __future__ import annotations

import functools
import math
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from st_ray.data.video_settings import VIDEO_EXTENSIONS

CAPTION_EXTENSION = "txt"
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
class ListedFile:
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


def make_row(dataset_id: str, image_id: str, uri: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(dataset_id=dataset_id, image_id=image_id, uri=uri, **values)
    return row


def name_extension(name: str) -> str:
    return posixpath.splitext(name)[1][1:].lower()


@functools.cache
def image_extensions() -> frozenset[str]:
    """Every extension Pillow can open (as SimpleTuner takes): jpg, png, webp, gif (its first
    frame), avif, ppm, tga, tiff, ... Stub formats Pillow only names (no decoder) are left out."""
    from PIL import Image, ImageFile

    Image.init()

    def decodes(fmt: str) -> bool:
        factory = Image.OPEN[fmt][0]
        return not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))

    return frozenset(
        ext[1:].lower()
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and decodes(fmt)
    )


def is_image_name(name: str) -> bool:
    return name_extension(name) in image_extensions()


def is_video_name(name: str) -> bool:
    """A clip of a video dataset: mp4, webm, mov or gif."""
    return name_extension(name) in VIDEO_EXTENSIONS


def ignored_count(
    files: Iterable[ListedFile], is_sample: Callable[[str], bool] = is_image_name
) -> int:
    """Listed files that are neither a sample (an image Pillow opens, or a clip of a video
    dataset) nor a caption sidecar."""
    return sum(
        1 for f in files if not is_sample(f.rel) and name_extension(f.rel) != CAPTION_EXTENSION
    )


def text_value(value: Any) -> str | None:
    """A caption cell as text: None for null/NaN/blank; several captions (a list cell) become
    one caption per line, like a multi-line caption file."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, list | tuple):
        parts = [t for t in (text_value(v) for v in value) if t]
        return "\n".join(parts) or None
    if hasattr(value, "tolist") and not isinstance(value, str):
        return text_value(value.tolist())
    text = str(value).strip()
    return text or None


def integer_value(value: Any) -> int | None:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None

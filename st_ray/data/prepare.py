"""The CPU stage of caching: read bytes, hash, decode, bucket, resize/crop, resolve captions.

Video datasets decode their clips here too (``st_ray.data.video``), streaming frames.

``prepare_batch`` runs as a Ray Data task over a batch of discovered rows. Every row comes
out with a ``status``: "ok" (decoded, pixels ready for the VAE), "cached" (its content hash
is already in the cache: nothing decoded) or a skip reason. Bad files never raise.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from st_ray import storage
from st_ray.data import conditioning, discovery
from st_ray.data.bucket_settings import BucketSettings
from st_ray.data.bucketing import aspect_in_range, plan_image
from st_ray.data.captions import resolve_captions
from st_ray.data.transforms import BadImage, apply_plan, load_image
from st_ray.data.video import BadClip, read_clip
from st_ray.data.video_settings import ClipSettings
from st_ray.storage import S3Settings

CACHED = "cached"
OK = "ok"
DECODE_FAILURES = ("unreadable", "zero_bytes", "not_an_image", "not_a_video", "truncated")


@dataclass(frozen=True)
class PrepareSettings:
    buckets: BucketSettings
    caption_strategy: str
    entry_fields: dict[str, Any]
    seed: int
    s3: S3Settings | None = None
    cached_hashes: frozenset[str] = field(default_factory=frozenset)
    delete_problematic: bool = False
    delete_unwanted: bool = False
    caption_filters: tuple[str, ...] = ()
    # One per paired conditioning dataset: its storage settings (rows carry the files).
    conditioning_s3: tuple[S3Settings | None, ...] = ()
    # A video dataset's clip settings (None: an image dataset).
    clip: ClipSettings | None = None


# Rows without pixels carry an empty image, so the column is always a uint8 HxWx3 tensor.
_NO_PIXELS = np.zeros((0, 0, 3), dtype=np.uint8)


def prepare_batch(batch: dict[str, np.ndarray], settings: PrepareSettings) -> dict[str, Any]:
    rows = [{key: batch[key][i] for key in batch} for i in range(len(batch["image_id"]))]
    out = [prepare_row(row, settings) for row in rows]
    columns: dict[str, Any] = {}
    for key in out[0]:
        values = [row[key] for row in out]
        if key in ("pixels", conditioning.PIXELS):
            values = [_NO_PIXELS if v is None else v for v in values]
        elif key == "captions":
            # Lists in object columns confuse Ray's Arrow conversion: carry them as JSON.
            key, values = "captions_json", [json.dumps(v) for v in values]
        ragged = key in ("pixels", conditioning.PIXELS)
        columns[key] = _ragged(values) if ragged else np.array(values, dtype=object)
    return columns


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


def prepare_row(row: dict[str, Any], settings: PrepareSettings) -> dict[str, Any]:
    result = {
        "dataset_id": row["dataset_id"],
        "image_id": row["image_id"],
        "uri": row["uri"],
        "status": OK,
        "content_hash": None,
        "captions": [],
        "original_width": None,
        "original_height": None,
        "bucket_width": None,
        "bucket_height": None,
        "crop_left": None,
        "crop_top": None,
        "pixels": None,
    }
    paired = bool(settings.conditioning_s3)
    if paired:
        result[conditioning.PIXELS] = None
    try:
        data = discovery.read_image_bytes(row, settings.s3)
    except Exception:  # noqa: BLE001 - any storage failure is a per-file skip, counted
        return {**result, "status": "unreadable"}
    result["content_hash"] = hashlib.sha256(data).hexdigest()
    extra: list[bytes] = []
    if paired:
        uris = json.loads(str(row[conditioning.URIS]))
        try:
            extra = [
                discovery.read_image_bytes({"uri": uri}, s3)
                for uri, s3 in zip(uris, settings.conditioning_s3, strict=True)
            ]
        except Exception:  # noqa: BLE001 - a per-pair skip, counted
            return {**result, "status": conditioning.UNREADABLE}
        hashes = [hashlib.sha256(b).hexdigest() for b in extra]
        result["content_hash"] = conditioning.pair_hash(result["content_hash"], hashes)

    captions = resolve_captions(
        settings.caption_strategy,
        image_id=row["image_id"],
        sidecar_text=_read_sidecar(row.get("caption_uri"), settings.s3),
        meta_caption=row.get("meta_caption"),
        meta_fallback=row.get("meta_fallback_caption"),
        entry_fields=settings.entry_fields,
        generated_caption=row.get("generated_caption"),
        caption_filters=settings.caption_filters,
        seed=settings.seed,
    )
    if not captions:
        return {**result, "status": "missing_caption"}
    result["captions"] = list(captions)
    if result["content_hash"] in settings.cached_hashes:
        return {**result, "status": CACHED}

    rng = random.Random(f"{result['content_hash']}:{settings.seed}")
    if settings.clip is not None:
        try:
            pixels, plan = read_clip(data, settings.clip, settings.buckets, rng)
        except BadClip as bad:
            if settings.delete_problematic and bad.reason in DECODE_FAILURES:
                _delete(row["uri"], settings.s3)
            return {**result, "status": bad.reason}
        result.update(original_width=plan.original_size[0], original_height=plan.original_size[1])
        return _planned(result, plan, pixels)
    try:
        image = load_image(data)
    except BadImage as bad:
        if settings.delete_problematic:
            _delete(row["uri"], settings.s3)
        return {**result, "status": bad.reason}
    width, height = image.size
    result.update(original_width=width, original_height=height)
    buckets = settings.buckets
    if not aspect_in_range(
        width / height, buckets.minimum_aspect_ratio, buckets.maximum_aspect_ratio
    ):
        return {**result, "status": "aspect_out_of_range"}
    plan = plan_image(width, height, buckets, rng)
    if plan.skip_reason is not None:
        if settings.delete_unwanted and plan.skip_reason == "too_small":
            _delete(row["uri"], settings.s3)
        return {**result, "status": plan.skip_reason}
    pixels = apply_plan(image, plan)
    if paired:
        try:
            aligned = conditioning.aligned_pixels([load_image(b) for b in extra], plan)
        except BadImage:
            return {**result, "status": conditioning.UNREADABLE}
        if aligned is None:
            return {**result, "status": conditioning.SIZE_MISMATCH}
        result[conditioning.PIXELS] = aligned
    return _planned(result, plan, pixels)


def _planned(result: dict[str, Any], plan: Any, pixels: np.ndarray) -> dict[str, Any]:
    """A decoded row: its bucket, crop and pixels ((H, W, 3), or (F, H, W, 3) for a clip)."""
    return {
        **result,
        "bucket_width": plan.bucket[0],
        "bucket_height": plan.bucket[1],
        "crop_left": plan.crop[0],
        "crop_top": plan.crop[1],
        "pixels": pixels,
    }


def _read_sidecar(uri: str | None, s3: S3Settings | None) -> str | None:
    if not uri:
        return None
    try:
        fs, path = storage.filesystem(uri, s3)
        return fs.cat_file(path).decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - an unreadable caption is the same as a missing one
        return None


def _delete(uri: str, s3: S3Settings | None) -> None:
    """Only for delete_problematic_images / delete_unwanted_images: the user asked for it."""
    if uri.startswith("hf://"):
        return
    fs, path = storage.filesystem(uri, s3)
    fs.rm(path)

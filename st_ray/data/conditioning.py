"""Conditioning images paired with their target images, file by file, for the latent cache.

Pairing (``pair_rows``): a conditioning image pairs with the target image of the same relative
path without extension (``a/cat.png`` with ``a/cat.jpg``), as SimpleTuner pairs a ControlNet
or mask dataset with its image dataset by file name. Targets without a pair in every
conditioning dataset are left out and listed; the others carry their conditioning files'
URIs and stamps (so a changed conditioning file makes the listing stale).

Alignment (``aligned_pixels``): each conditioning image goes through the very resize and crop
of its target (``bucketing.plan_image``'s plan), so the two stay aligned pixel for pixel. A
conditioning image of another size but the same aspect ratio is first resized to the
target's size; another aspect ratio cannot be aligned and the pair is skipped.

The cache key of a pair (``pair_hash``) is made of the target's and every conditioning
file's content hashes: changing either re-encodes the pair.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from st_ray.data.bucketing import ImagePlan
from st_ray.data.transforms import apply_plan

URIS = "conditioning_uris"
STAMPS = "conditioning_stamps"
PIXELS = "conditioning_pixels"
COLUMN = "conditioning"  # the latent shard's payload column: uint8 (K, H, W, 3)
NO_PAIR = "no_conditioning"
SIZE_MISMATCH = "conditioning_size_mismatch"
UNREADABLE = "conditioning_unreadable"
# Relative aspect-ratio difference still taken as "the same picture at another size".
ASPECT_TOLERANCE = 0.01


def pair_key(image_id: str) -> str:
    """What pairs two files: the relative path without its extension."""
    return posixpath.splitext(str(image_id))[0]


def pair_rows(
    rows: Sequence[Mapping[str, Any]], sources: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """``rows`` (a target dataset's discovery rows) that have a file in every one of
    ``sources`` ((conditioning dataset id, its discovery rows)), with those files' URIs and
    stamps attached; and, per conditioning dataset, the target image ids it has no file for."""
    by_key = [(cid, {pair_key(r["image_id"]): r for r in found}) for cid, found in sources]
    paired: list[dict[str, Any]] = []
    unpaired: dict[str, list[str]] = {cid: [] for cid, _ in sources}
    for row in rows:
        key = pair_key(row["image_id"])
        matches = []
        for cid, files in by_key:
            match = files.get(key)
            if match is None:
                unpaired[cid].append(str(row["image_id"]))
            matches.append(match)
        if any(m is None for m in matches):
            continue
        paired.append(
            {
                **row,
                URIS: json.dumps([str(m["uri"]) for m in matches]),
                STAMPS: json.dumps([m.get("stamp") for m in matches], default=str),
            }
        )
    return paired, {cid: ids for cid, ids in unpaired.items() if ids}


def unpaired_lines(
    dataset_id: str, unpaired: Mapping[str, Sequence[str]], shown: int = 10
) -> list[str]:
    """Report lines naming the images left out for want of a conditioning file."""
    lines = []
    for cid, ids in unpaired.items():
        names = ", ".join(ids[:shown]) + (
            f" (+{len(ids) - shown} more)" if len(ids) > shown else ""
        )
        lines.append(
            f"{dataset_id}: {len(ids)} image(s) without a file of the same name in conditioning "
            f"dataset '{cid}', skipped: {names}"
        )
    return lines


def pair_hash(target_hash: str, conditioning_hashes: Sequence[str]) -> str:
    """The cache key of a (target, conditioning...) pair."""
    joined = ":".join([target_hash, *conditioning_hashes])
    return hashlib.sha256(joined.encode()).hexdigest()


def aligned_pixels(images: Sequence[Image.Image], plan: ImagePlan) -> np.ndarray | None:
    """The conditioning images through their target's resize and crop: uint8 (K, H, W, 3);
    None when one cannot be aligned (another aspect ratio than the target's)."""
    width, height = plan.original_size
    out = []
    for image in images:
        if image.size != (width, height):
            w, h = image.size
            if abs((w / h) / (width / height) - 1) > ASPECT_TOLERANCE:
                return None
            image = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        out.append(apply_plan(image, plan))
    return np.stack(out)


def to_model_range(pixels: Any) -> Any:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1] (a torch tensor)."""
    import torch

    tensor = torch.as_tensor(pixels)
    return tensor.movedim(-1, -3).float() / 127.5 - 1.0


# --- a target dataset's conditioning, for the caching stage --------------------------------


def sources(datasets: Sequence[Any], entry: Any) -> list[Any]:
    """The conditioning datasets paired with ``entry`` (config.conditioning_links)."""
    from st_ray.data.conditioning_links import conditioning_of

    return conditioning_of(datasets, entry)


def cache_settings(datasets: Sequence[Any], entry: Any) -> dict[str, Any]:
    """What the latent cache's settings record of the pairing: a dataset that gains or
    loses conditioning gets a fresh cache (its rows are keyed by pair)."""
    linked = sources(datasets, entry)
    return {"conditioning": [e.id for e in linked]} if linked else {}


def source_s3(datasets: Sequence[Any], entry: Any) -> tuple[Any, ...]:
    """Storage settings of each paired conditioning dataset (None for local ones)."""
    from st_ray.storage import S3Settings

    return tuple(
        S3Settings.from_entry(e) if e.backend == "aws" else None for e in sources(datasets, entry)
    )


def paired(
    datasets: Sequence[Any], entry: Any, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """``entry``'s discovered rows paired with its conditioning datasets' files (unchanged
    without conditioning), and the unpaired image ids per conditioning dataset."""
    from st_ray.data import discovery

    linked = sources(datasets, entry)
    if not linked:
        return rows, {}
    found = [(e.id, discovery.discover(e)) for e in linked]
    return pair_rows(rows, found)

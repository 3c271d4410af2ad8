"""Decoding image bytes and applying a bucketing plan: CPU-only, no I/O, inputs never modified.

Broken files are classified with the pipeline's skip reasons: "zero_bytes" (an empty file),
"not_an_image" (no image format recognises the bytes) and "truncated" (the bytes begin like an
image but cannot be fully decoded: cut-off JPEGs and PNGs, damaged chunks).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from st_ray.data.bucketing import ImagePlan

# Leading bytes of the formats training data comes in (JPEG, PNG, GIF, WebP/RIFF, BMP, TIFF).
_SIGNATURES = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF8",
    b"RIFF",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)

ZERO_BYTES = "zero_bytes"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"


class BadImage(Exception):
    """An image that cannot be decoded; ``reason`` is the skip reason recorded for it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def load_image(data: bytes) -> Image.Image:
    """Decode ``data`` fully into an upright RGB image.

    Orientation follows the EXIF tag; alpha is dropped the way SimpleTuner does (a plain
    conversion to RGB, no compositing). Raises BadImage for broken input.
    """
    if not data:
        raise BadImage(ZERO_BYTES)
    # PIL's default, restated: st_ray never trains on a partially decoded (grey-padded) image.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # A huge but real image is data, not an attack: decode it (up to PIL's hard limit).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:  # over twice PIL's pixel limit (~179 MP)
        raise BadImage(NOT_AN_IMAGE, str(err)) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # UnidentifiedImageError is an OSError. Bytes that begin like an image but cannot be
        # parsed are a damaged image (typically cut off inside its header), not a stray file.
        reason = TRUNCATED if data.startswith(_SIGNATURES) else NOT_AN_IMAGE
        raise BadImage(reason, str(err)) from err
    try:
        image.load()  # the whole pixel stream: a cut-off file fails here, not at open()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadImage(TRUNCATED, str(err)) from err
    # A malformed EXIF block does not make the pixels bad: keep the image as stored.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def apply_plan(image: Image.Image, plan: ImagePlan) -> np.ndarray:
    """Resize (Lanczos) to ``plan.resize_to``, crop ``plan.bucket``: uint8 array (H, W, 3)."""
    if plan.bucket is None or plan.resize_to is None:
        raise ValueError(f"cannot apply a plan for a skipped image ({plan.skip_reason})")
    if image.size != plan.original_size:
        raise ValueError(f"plan is for a {plan.original_size} image, got {image.size}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != plan.resize_to:
        # reducing_gap: big downscales first shrink by an integer factor (fast box filter),
        # then finish with Lanczos; the result is indistinguishable from a full Lanczos.
        image = image.resize(plan.resize_to, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if plan.resize_to != plan.bucket:
        image = image.crop(plan.crop_box)
    pixels = np.array(image, dtype=np.uint8)  # a writable copy, owned by the caller
    expected = (plan.bucket[1], plan.bucket[0], 3)
    if pixels.shape != expected:  # cheap guard: a wrong shape would poison a whole batch
        raise ValueError(f"transform produced {pixels.shape}, expected {expected}")
    return pixels

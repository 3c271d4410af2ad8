"""Aspect bucketing: which bucket an image trains in, how it is resized, where it is cropped.

Pure functions only (no I/O, no torch), following SimpleTuner's dataloader semantics
(``helpers/multiaspect/image.py``, ``helpers/image_manipulation/training_sample.py`` and
``cropping.py``, ``helpers/metadata/backends/base.py``, ``documentation/DATALOADER.md``).

Units and options: ``st_ray.data.bucket_settings`` (``BucketSettings``); the dataset-level
counts (pruning, repeats): ``st_ray.data.bucket_counts``.

An image's plan: optional skip ("too_small"); otherwise one resize of the whole image (aspect
preserved) to ``resize_to``, then a crop of ``bucket`` size at ``crop`` (left, top). The
resize is always the smallest that covers the bucket, so the crop never leaves the image.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from st_ray.data.bucket_settings import BucketSettings, mp_to_px, round_to_multiple

TOO_SMALL = "too_small"
# Absorbs float error in products such as 100 * 1.15 before they are floored.
_EPS = 1e-9

Size = tuple[int, int]


@dataclass(frozen=True)
class ImagePlan:
    """What to do with one image; sizes are (width, height)."""

    original_size: Size
    skip_reason: str | None = None
    resize_to: Size | None = None  # whole image resized to this first (aspect preserved)
    bucket: Size | None = None  # final training size, a multiple of the alignment
    crop: Size = (0, 0)  # (left, top) of the bucket-sized crop inside resize_to
    aspect: float | None = None  # bucket aspect rounded: SimpleTuner's bucket key

    @property
    def ok(self) -> bool:
        return self.skip_reason is None

    @property
    def crop_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in resize_to coordinates, as PIL's Image.crop takes."""
        if self.bucket is None:
            raise ValueError(f"no crop box: the image is skipped ({self.skip_reason})")
        left, top = self.crop
        return left, top, left + self.bucket[0], top + self.bucket[1]


def aspect_ratio(width: float, height: float, rounding: int = 2) -> float:
    """width / height rounded to ``rounding`` decimals (aspect_bucket_rounding)."""
    return round(width / height, rounding)


def aspect_in_range(aspect: float, minimum: float | None, maximum: float | None) -> bool:
    """minimum_aspect_ratio / maximum_aspect_ratio: SimpleTuner drops buckets whose aspect key
    is outside the range (0 or None means no limit)."""
    return not (minimum and aspect < minimum) and not (maximum and aspect > maximum)


def is_too_small(width: int, height: int, settings: BucketSettings) -> bool:
    """minimum_image_size (SimpleTuner's meets_resolution_requirements, negated).

    "pixel": both sides must reach it. "area": width*height must reach it, and with a square
    crop so must both sides reach the edge of that area (floor of its square root).
    """
    minimum = settings.minimum_image_size
    if not minimum:
        return False
    if settings.resolution_type == "pixel":
        return width < minimum or height < minimum
    area = mp_to_px(minimum)
    if settings.crop and settings.crop_aspect == "square":
        edge = math.floor(math.sqrt(area) + _EPS)
        if width < edge or height < edge:
            return True
    return width * height < area


def is_oversized(width: int, height: int, settings: BucketSettings) -> bool:
    """maximum_image_size (SimpleTuner's is_image_too_large): "pixel" any side above it,
    "area" the pixel area above it."""
    maximum = settings.maximum_image_size
    if not maximum:
        return False
    if settings.resolution_type == "pixel":
        return width > maximum or height > maximum
    return width * height > mp_to_px(maximum)


def target_size(aspect: float, resolution: float, original: Size, settings: BucketSettings) -> Size:
    """Bucket size for a (rounded) target aspect at ``resolution`` (settings' units).

    "pixel" (calculate_new_size_by_pixel_edge): the edge that is shorter in the ORIGINAL image
    gets ``resolution``, the other ``resolution`` x/÷ aspect (truncated); both are rounded to
    the alignment. "area" (calculate_new_size_by_pixel_area): edge = int(sqrt(mp * 1e6))
    rounded to the alignment, then width = edge*sqrt(aspect), height = edge/sqrt(aspect),
    each rounded to the alignment.
    """
    align = settings.alignment
    width, height = original
    if settings.resolution_type == "pixel":
        edge = int(resolution)
        if width < height:
            size = (edge, math.floor(edge / aspect + _EPS))
        else:
            size = (math.floor(edge * aspect + _EPS), edge)
        bucket = (round_to_multiple(size[0], align), round_to_multiple(size[1], align))
    else:
        edge = round_to_multiple(int(math.sqrt(mp_to_px(resolution)) + _EPS), align)
        root = math.sqrt(aspect)
        bucket = (round_to_multiple(edge * root, align), round_to_multiple(edge / root, align))
    return bucket


def bucket_for(aspect: float, original: Size, settings: BucketSettings) -> Size:
    """The training bucket for a target aspect: ``target_size`` at the dataset resolution,
    except that a bucket whose own aspect rounds to 1.0 becomes the square bucket
    (square_edge), as at the end of SimpleTuner's calculate_target_size."""
    bucket = target_size(aspect, settings.resolution, original, settings)
    if aspect_ratio(*bucket, settings.rounding) == 1.0:
        return settings.square_edge, settings.square_edge
    return bucket


def cover_size(original: Size, target: Size) -> Size:
    """Smallest resize of ``original`` (aspect kept, sides truncated) covering ``target``.

    SimpleTuner's intermediary size: one side equals the target's, the other follows the
    original aspect. Checked against SimpleTuner's functions on 24k random sizes: identical
    for "pixel" with a resolution that is a multiple of the alignment; for "area" its
    two-step growth is sometimes 1-3 px larger (a little more crop slack). Its square-crop
    and downsample paths could leave the image smaller than the bucket; this never does.
    """
    width, height = original
    scale = max(target[0] / width, target[1] / height)
    return (
        max(target[0], math.floor(width * scale + _EPS)),
        max(target[1], math.floor(height * scale + _EPS)),
    )


def plan_image(width: int, height: int, settings: BucketSettings, rng: random.Random) -> ImagePlan:
    """Decide bucket, resize and crop for one ``width`` x ``height`` image.

    * too small for minimum_image_size -> skip "too_small".
    * crop false, or crop_aspect "preserve": bucket from the image's own (rounded) aspect.
      SimpleTuner still crops here, but only the few pixels the alignment rounding removed
      (placed by crop_style), so the image is never stretched.
    * crop_aspect "square": the square bucket (square_edge).
    * "closest" / "random": an aspect from crop_aspect_buckets (the nearest one / a random or
      weighted-random one). With max_upscale_threshold, buckets that would need more than
      (1 + threshold) upscaling are not candidates; if none is left the image is
      "too_small" (SimpleTuner documents exclusion; its code would fall back to a square).
    * crop with maximum_image_size: an image above it is first resized to the size
      target_downsample_size gives its own aspect (more scene context), then cropped.

    All randomness (random aspect, random crop position) comes from ``rng``.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid image size {width}x{height}")
    original = (width, height)
    if is_too_small(width, height, settings):
        return ImagePlan(original, skip_reason=TOO_SMALL)

    own_aspect = aspect_ratio(width, height, settings.rounding)
    if settings.crop and settings.crop_aspect == "square":
        bucket = (settings.square_edge, settings.square_edge)
    elif settings.crop and settings.crop_aspect in ("closest", "random"):
        chosen = _choose_aspect(own_aspect, original, settings, rng)
        if chosen is None:
            return ImagePlan(original, skip_reason=TOO_SMALL)
        bucket = bucket_for(chosen, original, settings)
    else:
        bucket = bucket_for(own_aspect, original, settings)

    resize_to = cover_size(original, bucket)
    if settings.crop and is_oversized(width, height, settings):
        # _calculate_target_downsample_size: the resize target_downsample_size would give the
        # image's own aspect, grown if needed so the bucket still fits inside it.
        assert settings.target_downsample_size is not None  # create() enforces the pair
        staged = target_size(own_aspect, settings.target_downsample_size, original, settings)
        resize_to = cover_size(original, _max_size(cover_size(original, staged), bucket))

    return ImagePlan(
        original,
        resize_to=resize_to,
        bucket=bucket,
        crop=_crop_offsets(resize_to, bucket, settings.crop_style, rng),
        aspect=aspect_ratio(*bucket, settings.rounding),
    )


def _choose_aspect(
    own_aspect: float, original: Size, settings: BucketSettings, rng: random.Random
) -> float | None:
    candidates = list(settings.crop_aspect_buckets)
    threshold = settings.max_upscale_threshold
    if threshold is not None:
        # _trim_aspect_bucket_list: keep a bucket when neither side exceeds the original's
        # by more than the threshold (downscaling is always fine).
        limit = 1.0 + threshold
        candidates = [
            c
            for c in candidates
            if _fits(bucket_for(c.aspect, original, settings), original, limit)
        ]
    if not candidates:
        return None
    if settings.crop_aspect == "closest":
        return min(candidates, key=lambda c: abs(c.aspect - own_aspect)).aspect
    if candidates[0].weight is not None:
        return rng.choices([c.aspect for c in candidates], [c.weight or 0.0 for c in candidates])[0]
    return rng.choice(candidates).aspect


def _fits(bucket: Size, original: Size, limit: float) -> bool:
    return bucket[0] <= original[0] * limit + _EPS and bucket[1] <= original[1] * limit + _EPS


def _crop_offsets(resize_to: Size, bucket: Size, style: str, rng: random.Random) -> Size:
    """(left, top) per cropping.py: corner (0, 0); center truncates half the slack; random
    draws left then top uniformly from 0..slack."""
    slack_x, slack_y = resize_to[0] - bucket[0], resize_to[1] - bucket[1]
    if style == "corner":
        return 0, 0
    if style == "center":
        return slack_x // 2, slack_y // 2
    if style == "random":
        left = rng.randint(0, slack_x) if slack_x > 0 else 0
        top = rng.randint(0, slack_y) if slack_y > 0 else 0
        return left, top
    raise NotImplementedError(f"crop_style {style!r} is not implemented")


def _max_size(a: Size, b: Size) -> Size:
    return max(a[0], b[0]), max(a[1], b[1])

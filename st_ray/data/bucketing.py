"""Aspect bucketing: which bucket an image trains in, how it is resized, where it is cropped.

Pure functions only (no I/O, no torch), following SimpleTuner's dataloader semantics
(``helpers/multiaspect/image.py``, ``helpers/image_manipulation/training_sample.py`` and
``cropping.py``, ``helpers/metadata/backends/base.py``, ``documentation/DATALOADER.md``).

Units, as in SimpleTuner:

* ``resolution_type "pixel"``: ``resolution`` is the target length of the image's shorter
  edge; ``minimum_image_size`` / ``maximum_image_size`` / ``target_downsample_size`` are edge
  lengths in pixels.
* ``"area"``: ``resolution`` and the sizes are megapixels, 1 MP = 1e6 pixels (not 1024**2).
  SimpleTuner squares a megapixel target into an edge ``int(sqrt(mp * 1e6))`` rounded to the
  alignment, so ``1.0`` gives a 1024 edge at alignment 64 but 992 at alignment 16.
* ``"pixel_area"``: ``resolution`` (and every size) is an edge length in pixels that is turned
  into the equal area: ``edge**2 / 1e6`` megapixels, after which it behaves as ``"area"``.
  ``1024`` is exactly 1024x1024 pixels.

An image's plan: optional skip ("too_small"); otherwise one resize of the whole image (aspect
preserved) to ``resize_to``, then a crop of ``bucket`` size at ``crop`` (left, top). The
resize is always the smallest that covers the bucket, so the crop never leaves the image.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TOO_SMALL = "too_small"
RESOLUTION_TYPES = ("pixel", "area", "pixel_area")
CROP_STYLES = ("random", "center", "centre", "corner", "face")
CROP_ASPECTS = ("square", "preserve", "closest", "random")

# SimpleTuner maps these common megapixel values onto their power-of-two squares when it
# derives the square edge (1.0 MP -> 1024x1024, not 1000x1000); see _square_edge.
_AREA_REMAP = {0.25: 512**2, 0.5: 768**2, 1.0: 1024**2, 2.0: 1536**2, 4.0: 2048**2}
_AREA_REMAP_TOLERANCE = 0.05
# Absorbs float error in products such as 100 * 1.15 before they are floored.
_EPS = 1e-9

Size = tuple[int, int]


@dataclass(frozen=True)
class AspectChoice:
    """One entry of crop_aspect_buckets: an aspect ratio (w/h) and its optional weight."""

    aspect: float
    weight: float | None = None


@dataclass(frozen=True)
class BucketSettings:
    """A dataset's bucketing options, normalised to SimpleTuner's internal units.

    ``resolution_type`` is "pixel" or "area" ("pixel_area" is converted on construction);
    ``resolution`` and the three size limits are pixels for "pixel" and megapixels for
    "area". Build it with ``create`` or ``from_entry``, which validate and convert.
    """

    resolution: float
    resolution_type: str
    alignment: int = 64
    rounding: int = 2
    minimum_image_size: float | None = None
    maximum_image_size: float | None = None
    target_downsample_size: float | None = None
    max_upscale_threshold: float | None = None
    crop: bool = False
    crop_style: str = "random"
    crop_aspect: str = "square"
    crop_aspect_buckets: tuple[AspectChoice, ...] = ()
    minimum_aspect_ratio: float | None = None
    maximum_aspect_ratio: float | None = None

    @classmethod
    def create(
        cls,
        resolution: float,
        resolution_type: str = "pixel_area",
        *,
        alignment: int = 64,
        rounding: int = 2,
        minimum_image_size: float | None = None,
        maximum_image_size: float | None = None,
        target_downsample_size: float | None = None,
        max_upscale_threshold: float | None = None,
        crop: bool = False,
        crop_style: str = "random",
        crop_aspect: str = "square",
        crop_aspect_buckets: Any = None,
        minimum_aspect_ratio: float | None = None,
        maximum_aspect_ratio: float | None = None,
    ) -> BucketSettings:
        """Validate user-facing values and convert "pixel_area" to "area" megapixels."""
        if resolution_type not in RESOLUTION_TYPES:
            raise ValueError(
                f"resolution_type must be one of {', '.join(RESOLUTION_TYPES)}, "
                f"not {resolution_type!r}"
            )
        if resolution is None or resolution <= 0:
            raise ValueError(f"resolution must be a positive number, not {resolution!r}")
        if alignment <= 0:
            raise ValueError(f"aspect_bucket_alignment must be positive, not {alignment}")
        if crop_style not in CROP_STYLES:
            raise ValueError(f"crop_style must be one of {', '.join(CROP_STYLES)}")
        if crop_style == "face":
            raise NotImplementedError("crop_style 'face' (face detection) is not implemented")
        if crop_aspect not in CROP_ASPECTS:
            raise ValueError(f"crop_aspect must be one of {', '.join(CROP_ASPECTS)}")
        buckets = parse_aspect_buckets(crop_aspect_buckets)
        if crop and crop_aspect in ("closest", "random") and not buckets:
            raise ValueError(f"crop_aspect '{crop_aspect}' needs a non-empty crop_aspect_buckets")
        if maximum_image_size and not target_downsample_size:
            raise ValueError("maximum_image_size needs target_downsample_size to be set too")
        if resolution_type == "pixel" and float(resolution) != int(resolution):
            raise ValueError(f"resolution_type 'pixel' needs a whole pixel count, not {resolution}")

        sizes = [minimum_image_size, maximum_image_size, target_downsample_size]
        if resolution_type == "pixel_area":
            # SimpleTuner's DataBackendFactory._handle_resolution_conversion: every pixel
            # edge becomes the megapixels of the equal square; then the type is "area".
            resolution = resolution * resolution / 1e6
            sizes = [s * s / 1e6 if s and s > 0 else s for s in sizes]
            resolution_type = "area"
        return cls(
            resolution=float(resolution),
            resolution_type=resolution_type,
            alignment=int(alignment),
            rounding=int(rounding),
            minimum_image_size=sizes[0] or None,
            maximum_image_size=sizes[1] or None,
            target_downsample_size=sizes[2] or None,
            max_upscale_threshold=max_upscale_threshold,
            crop=bool(crop),
            crop_style="center" if crop_style == "centre" else crop_style,
            crop_aspect=crop_aspect,
            crop_aspect_buckets=buckets,
            minimum_aspect_ratio=minimum_aspect_ratio or None,
            maximum_aspect_ratio=maximum_aspect_ratio or None,
        )

    @classmethod
    def from_entry(
        cls,
        entry: Any,
        pixel_granularity: int,
        *,
        alignment: int | None = None,
        rounding: int | None = None,
        family: str = "this model family",
    ) -> BucketSettings:
        """Settings of a DatasetEntry (anything with ``.fields``, or a plain mapping).

        ``alignment`` / ``rounding`` are the run-wide aspect_bucket_alignment /
        aspect_bucket_rounding options (dataset entries do not carry them); when not given
        they are read from the entry's fields if present, else SimpleTuner's defaults 64 / 2.
        The alignment is checked against the family's latent granularity.
        """
        fields: Mapping[str, Any] = getattr(entry, "fields", entry)
        if alignment is None:
            alignment = int(fields.get("aspect_bucket_alignment") or 64)
        if rounding is None:
            rounding = int(fields.get("aspect_bucket_rounding") or 2)
        check_alignment(alignment, pixel_granularity, family)
        return cls.create(
            fields.get("resolution") or 1024.0,
            fields.get("resolution_type") or "pixel_area",
            alignment=alignment,
            rounding=rounding,
            minimum_image_size=fields.get("minimum_image_size"),
            maximum_image_size=fields.get("maximum_image_size"),
            target_downsample_size=fields.get("target_downsample_size"),
            max_upscale_threshold=fields.get("max_upscale_threshold"),
            crop=bool(fields.get("crop")),
            crop_style=fields.get("crop_style") or "random",
            crop_aspect=fields.get("crop_aspect") or "square",
            crop_aspect_buckets=fields.get("crop_aspect_buckets"),
            minimum_aspect_ratio=fields.get("minimum_aspect_ratio"),
            maximum_aspect_ratio=fields.get("maximum_aspect_ratio"),
        )

    @property
    def square_edge(self) -> int:
        """Side of the square bucket: square crops and every bucket whose aspect is 1.0.

        SimpleTuner's ``pixel_resolution``: the pixel resolution, or for "area" the square
        root of the (remapped, see _AREA_REMAP) target area. Unlike SimpleTuner it is always
        rounded to the alignment, so a square bucket is latent-aligned even for odd values.
        """
        if self.resolution_type == "pixel":
            return round_to_multiple(self.resolution, self.alignment)
        area = _mp_to_px(self.resolution)
        for megapixels, remapped in _AREA_REMAP.items():
            if abs(self.resolution - megapixels) < _AREA_REMAP_TOLERANCE:
                area = remapped
                break
        return round_to_multiple(math.sqrt(area), self.alignment)


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


def check_alignment(alignment: int, pixel_granularity: int, family: str) -> None:
    """Refuse an aspect_bucket_alignment whose buckets would not map to whole latent tokens.

    SimpleTuner silently overrides the alignment for most families; st_ray says so instead.
    """
    if alignment <= 0 or alignment % pixel_granularity:
        raise ValueError(
            f"aspect_bucket_alignment {alignment} is not a multiple of {pixel_granularity}, "
            f"the pixel size of one latent token for model family '{family}' (VAE downscale "
            f"x patch size): bucket sides would not divide into whole latents. Use a multiple "
            f"of {pixel_granularity} (64 works for every family)."
        )


def parse_aspect_buckets(value: Any) -> tuple[AspectChoice, ...]:
    """crop_aspect_buckets as SimpleTuner accepts it: numbers, or weighted objects.

    Objects may name the ratio ``aspect`` (SimpleTuner's selection code), ``aspect_ratio``
    (its upscale filter) or ``aspect_bucket``; weighted entries must all carry a ``weight``
    and the weights must sum to 1.
    """
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError("crop_aspect_buckets must be a list of aspect ratios")
    choices = []
    for item in value:
        if isinstance(item, Mapping):
            key = next((k for k in ("aspect", "aspect_ratio", "aspect_bucket") if k in item), None)
            if key is None or "weight" not in item:
                raise ValueError(
                    "weighted crop_aspect_buckets entries look like {'aspect': 1.0, 'weight': 0.5}; "
                    f"got {dict(item)!r}"
                )
            choices.append(AspectChoice(_positive(item[key]), _positive(item["weight"], True)))
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            choices.append(AspectChoice(_positive(item)))
        else:
            raise ValueError(f"crop_aspect_buckets entries must be numbers or objects: {item!r}")
    weighted = [c.weight is not None for c in choices]
    if any(weighted) and not all(weighted):
        raise ValueError("crop_aspect_buckets mixes plain ratios and weighted entries")
    if all(weighted) and choices:
        total = sum(c.weight or 0.0 for c in choices)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(
                f"crop_aspect_buckets weights must add up to 1, they add up to {total}"
            )
    return tuple(choices)


def _positive(value: Any, allow_zero: bool = False) -> float:
    number = float(value)
    if number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"crop_aspect_buckets values must be positive, not {value!r}")
    return number


def round_to_multiple(value: float, multiple: int) -> int:
    """Nearest multiple, at least ``multiple``. Python's round: halves go to the even count
    (62.5 multiples -> 62), exactly as SimpleTuner's _round_to_nearest_multiple."""
    return max(round(value / multiple) * multiple, multiple)


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
    area = _mp_to_px(minimum)
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
    return width * height > _mp_to_px(maximum)


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
        edge = round_to_multiple(int(math.sqrt(_mp_to_px(resolution)) + _EPS), align)
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


def _mp_to_px(megapixels: float) -> float:
    # Rounded so that e.g. 64**2 / 1e6 MP comes back as exactly 4096 pixels.
    return round(megapixels * 1e6, 3)


# --- dataset level -------------------------------------------------------------------------


def prune_buckets(
    bucket_counts: Mapping[Size, int],
    batch_size: int,
    world_size: int,
    disable_pruning: bool,
    repeats: int = 0,
) -> tuple[dict[Size, int], dict[Size, int]]:
    """Split buckets into (kept, dropped) by whether they can fill one batch on every rank.

    A bucket is dropped when ``count * (repeats + 1) < batch_size * world_size``.
    disable_bucket_pruning keeps everything. (SimpleTuner prunes at ``batch_size`` and then
    refuses, at the rank split, any bucket below batch x GPUs x grad-accum; st_ray drops the
    buckets that cannot give each rank a batch and leaves the accumulation check to
    ``effective_repeats``.)
    """
    if disable_pruning:
        return dict(bucket_counts), {}
    need = batch_size * world_size
    kept: dict[Size, int] = {}
    dropped: dict[Size, int] = {}
    for bucket, count in bucket_counts.items():
        (kept if count * (repeats + 1) >= need else dropped)[bucket] = count
    return kept, dropped


def effective_repeats(
    num_images: int,
    repeats: int,
    batch_size: int,
    world_size: int,
    grad_accum: int,
    allow_oversubscription: bool,
) -> int:
    """The repeats to use so ``num_images`` can fill one effective batch.

    repeats 0 = each image once per epoch; n = n + 1 times. The effective batch is
    train_batch_size x GPUs x gradient_accumulation_steps. When num_images * (repeats + 1)
    is below it: with allow_dataset_oversubscription and no repeats set (0), repeats become
    ceil(effective / num_images) - 1 (25 images, 8 GPUs, batch 4 -> 1); otherwise ValueError.
    SimpleTuner applies this per aspect bucket: call it with a bucket's count, or use
    ``bucket_repeats``.
    """
    return bucket_repeats(
        {(0, 0): num_images}, repeats, batch_size, world_size, grad_accum, allow_oversubscription
    )[(0, 0)]


def bucket_repeats(
    bucket_counts: Mapping[Size, int],
    repeats: int,
    batch_size: int,
    world_size: int,
    grad_accum: int,
    allow_oversubscription: bool,
    dataset_id: str = "dataset",
) -> dict[Size, int]:
    """``effective_repeats`` for every bucket, raising one error that lists every short one."""
    effective = batch_size * world_size * grad_accum
    result: dict[Size, int] = {}
    short: dict[Size, tuple[int, int]] = {}
    for bucket, count in bucket_counts.items():
        if count > 0 and count * (repeats + 1) >= effective:
            result[bucket] = repeats
            continue
        needed = math.ceil(effective / count) - 1 if count > 0 else None
        if needed is not None and allow_oversubscription and repeats == 0:
            result[bucket] = needed
        else:
            short[bucket] = (count, -1 if needed is None else needed)
    if short:
        raise ValueError(
            _short_message(dataset_id, short, repeats, batch_size, world_size, grad_accum)
        )
    return result


def _short_message(
    dataset_id: str,
    short: Mapping[Size, tuple[int, int]],
    repeats: int,
    batch_size: int,
    world_size: int,
    grad_accum: int,
) -> str:
    effective = batch_size * world_size * grad_accum
    lines = [
        f"{dataset_id}: too few images to form one batch: the effective batch is "
        f"train_batch_size {batch_size} x {world_size} GPU(s) x gradient_accumulation_steps "
        f"{grad_accum} = {effective} samples, with repeats {repeats}."
    ]
    for (width, height), (count, needed) in short.items():
        where = "the dataset" if (width, height) == (0, 0) else f"bucket {width}x{height}"
        if count <= 0:
            lines.append(f"  {where} has no usable images")
        else:
            lines.append(
                f"  {where}: {count} image(s) x {repeats + 1} = {count * (repeats + 1)} samples; "
                f"needs repeats >= {needed}"
            )
    fixes = "lower train_batch_size or gradient_accumulation_steps, use fewer GPUs, add images, "
    fixes += "or raise repeats"
    if repeats == 0:
        fixes += " (or set allow_dataset_oversubscription to raise it automatically)"
    else:
        fixes += " (allow_dataset_oversubscription never overrides repeats set by hand)"
    lines.append("Fix: " + fixes + ".")
    return "\n".join(lines)


def count_buckets(plans: Iterable[ImagePlan]) -> dict[Size, int]:
    """Images per bucket among the plans that were not skipped."""
    counts: dict[Size, int] = {}
    for plan in plans:
        if plan.bucket is not None:
            counts[plan.bucket] = counts.get(plan.bucket, 0) + 1
    return counts

"""A dataset's bucketing options (``BucketSettings``), validated and in SimpleTuner's units.

Pure functions only, following SimpleTuner (``helpers/multiaspect/image.py``,
``helpers/data_backend/factory.py``, ``documentation/DATALOADER.md``); the image plan that uses
them is ``st_ray.data.bucketing``.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RESOLUTION_TYPES = ("pixel", "area", "pixel_area")
CROP_STYLES = ("random", "center", "centre", "corner", "face")
CROP_ASPECTS = ("square", "preserve", "closest", "random")

# SimpleTuner maps these common megapixel values onto their power-of-two squares when it
# derives the square edge (1.0 MP -> 1024x1024, not 1000x1000); see _square_edge.
_AREA_REMAP = {0.25: 512**2, 0.5: 768**2, 1.0: 1024**2, 2.0: 1536**2, 4.0: 2048**2}
_AREA_REMAP_TOLERANCE = 0.05


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
        area = mp_to_px(self.resolution)
        for megapixels, remapped in _AREA_REMAP.items():
            if abs(self.resolution - megapixels) < _AREA_REMAP_TOLERANCE:
                area = remapped
                break
        return round_to_multiple(math.sqrt(area), self.alignment)


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


def mp_to_px(megapixels: float) -> float:
    # Rounded so that e.g. 64**2 / 1e6 MP comes back as exactly 4096 pixels.
    return round(megapixels * 1e6, 3)

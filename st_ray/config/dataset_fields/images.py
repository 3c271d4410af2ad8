"""Dataset fields: resolution, bucketing and cropping of one dataset's images."""

from __future__ import annotations

from st_ray.config.dataset_fields.common import group
from st_ray.config.schema import Json, Option, opt

SIZES: list[Option] = group(
    "Resolution, bucketing and cropping",
    [
        opt(
            "minimum_aspect_ratio",
            float,
            None,
            "Skip images whose width/height is below this.",
            minimum=0,
        ),
        opt(
            "maximum_aspect_ratio",
            float,
            None,
            "Skip images whose width/height is above this.",
            minimum=0,
        ),
        opt(
            "crop",
            bool,
            False,
            "Crop images to their bucket's exact size instead of only resizing them.",
        ),
        opt(
            "crop_style",
            str,
            "random",
            "Which part of the image a crop keeps: 'random', 'center' ('centre'), 'corner' or "
            "'face'.",
            choices=("random", "center", "centre", "corner", "face"),
            unsupported_values={"face": "face detection is not implemented yet"},
        ),
        opt(
            "crop_aspect",
            str,
            "square",
            "Shape of the crop: 'square', 'preserve' (the image's own aspect ratio), "
            "'closest' or 'random' (one of crop_aspect_buckets).",
            choices=("square", "preserve", "closest", "random"),
        ),
        opt(
            "crop_aspect_buckets",
            Json,
            None,
            "Aspect ratios crop_aspect 'closest'/'random' may pick (required with those): a "
            "list of numbers, or of {aspect_bucket, weight} objects whose weights sum to 1.",
        ),
    ],
)

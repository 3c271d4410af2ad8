"""Fields of the nested blocks of a dataset entry: ``"parquet": {...}`` (the metadata table),
``"huggingface": {...}`` (Hub dataset options) and ``"video": {...}`` (clip lengths)."""

from __future__ import annotations

from st_ray.config.dataset_fields.common import AUDIO, GROUNDING, VIDEO, group
from st_ray.config.schema import Json, Option, opt

PARQUET_FIELDS: list[Option] = group(
    "parquet block",
    [
        opt(
            "path",
            str,
            None,
            "The table: a .parquet file, or JSON Lines (.jsonl) / JSON (.json). Required. "
            "SimpleTuner reads it through the dataset's own storage backend.",
        ),
        opt(
            "filename_column",
            str,
            None,
            "Column identifying each image. Unset: the run-wide parquet_filename_column, else "
            "'id'.",
        ),
        opt(
            "identifier_includes_extension",
            bool,
            False,
            "true when filename_column holds names with their extension, matched as paths "
            "relative to the dataset folder; false matches the bare file stem (the image is "
            "then assumed to be '<id>.png' when a name must be built).",
        ),
        opt(
            "caption_column",
            str,
            None,
            "Column with the captions (SimpleTuner also takes a list of columns, or a column "
            "of string lists, as several captions). Unset: the run-wide "
            "parquet_caption_column, else 'description'.",
        ),
        opt(
            "fallback_caption_column",
            str,
            None,
            "Column used where the caption is null or empty.",
        ),
        opt("width_column", str, "width", "Column with each image's width in pixels."),
        opt("height_column", str, "height", "Column with each image's height in pixels."),
        opt(
            "aspect_ratio_column",
            str,
            None,
            "Column with a precomputed aspect ratio used for bucketing (code only).",
            unsupported="aspect ratios are computed from width and height",
        ),
        opt("bbox_column", str, None, "Column with bounding boxes.", unsupported=GROUNDING),
        opt("num_frames_column", str, None, "Column with video frame counts.", unsupported=VIDEO),
        opt("fps_column", str, None, "Column with video frame rates.", unsupported=VIDEO),
    ],
)


HUGGINGFACE_FIELDS: list[Option] = group(
    "huggingface block",
    [
        opt(
            "dataset_name",
            str,
            None,
            "Hub dataset id; the top-level dataset_name takes precedence.",
        ),
        opt("split", str, "train", "Split to load; the top-level split takes precedence."),
        opt("revision", str, None, "Dataset revision; the top-level revision takes precedence."),
        opt(
            "image_column",
            str,
            "image",
            "Column holding the images; the top-level image_column takes precedence.",
        ),
        opt(
            "caption_column",
            str,
            "caption",
            "Column with the captions; dotted names reach into nested fields ('meta.caption'). "
            "SimpleTuner also takes a list of columns.",
        ),
        opt(
            "fallback_caption_column",
            str,
            None,
            "Column used where the caption is missing or empty.",
        ),
        opt(
            "description_column",
            str,
            "description",
            "Column with a longer description some caption modes use.",
            no_effect="st_ray captions from caption_column and fallback_caption_column only",
        ),
        opt(
            "width_column",
            str,
            None,
            "Column with image widths; unset: read the size from the image itself.",
        ),
        opt(
            "height_column",
            str,
            None,
            "Column with image heights; unset: read the size from the image itself.",
        ),
        opt(
            "cache_dir",
            str,
            None,
            "Local folder for downloaded dataset files. Unset: <cache_dir>/huggingface/<id>.",
        ),
        opt(
            "num_proc",
            int,
            16,
            "Processes used when filtering the dataset.",
            minimum=1,
            no_effect="Ray Data parallelises the work instead of datasets' worker processes",
        ),
        opt(
            "file_extension",
            str,
            "jpg",
            "Extension of the virtual file names ('<row index>.<ext>') given to rows.",
        ),
        opt(
            "auto_load",
            bool,
            False,
            "Load the dataset as soon as the backend is created instead of on first use.",
            no_effect="st_ray loads the dataset when the caching stage lists it, once per run",
        ),
        opt(
            "streaming",
            bool,
            False,
            "Stream the dataset.",
            unsupported="not functional in SimpleTuner either: buckets need every row's metadata",
        ),
        opt(
            "filter_func",
            Json,
            None,
            "Row filters: collection (list), min_width, min_height, quality_thresholds "
            "({metric: minimum}) with quality_column.",
            unsupported="Hub dataset filtering is not implemented yet",
        ),
        opt(
            "quality_column",
            str,
            "quality_assessment",
            "Column holding the quality scores filter_func.quality_thresholds checks.",
            unsupported="Hub dataset filtering is not implemented yet",
        ),
        opt(
            "composite_image_config",
            Json,
            None,
            "Split grid images: {enabled, image_count, select_index}.",
            unsupported="composite (grid) image splitting is not implemented yet",
        ),
        opt("video_column", str, "video", "Column holding videos.", unsupported=VIDEO),
        opt("num_frames_column", str, None, "Column with frame counts.", unsupported=VIDEO),
        opt("fps_column", str, None, "Column with frame rates.", unsupported=VIDEO),
        opt("bbox_column", str, None, "Column with bounding boxes.", unsupported=GROUNDING),
        opt("lyrics_column", str, "lyrics", "Column with song lyrics.", unsupported=AUDIO),
        opt(
            "audio_caption_fields",
            Json,
            None,
            "Columns joined into an audio prompt (SimpleTuner default ['prompt', 'tags']).",
            unsupported=AUDIO,
        ),
    ],
)


VIDEO_FIELDS: list[Option] = group(
    "video block",
    [
        opt(
            "num_frames",
            int,
            125,
            "Frames of each clip trained on, taken from its start at the run's framerate. "
            "Must be a length the family's VAE takes (frame_step * k + 1; see the family table).",
            minimum=1,
        ),
        opt(
            "min_frames",
            int,
            None,
            "Clips shorter than this (at the run's framerate) are skipped as too_short. "
            "Unset: num_frames. Shorter clips than num_frames would need frame-count buckets.",
            minimum=1,
        ),
        opt(
            "max_frames",
            int,
            None,
            "Clips longer than this (from the container's duration, nothing decoded) are "
            "skipped as too_long. Unset or 0: no limit.",
            minimum=0,
        ),
        opt(
            "is_i2v",
            bool,
            False,
            "Train image-to-video: the first frame conditions the rest. Needs an I2V flavour.",
        ),
        opt(
            "bucket_strategy",
            str,
            "aspect_ratio",
            "How clips are bucketed: by aspect ratio (every clip num_frames long), or by "
            "resolution and frame count.",
            choices=("aspect_ratio", "resolution_frames"),
            unsupported_values={
                "resolution_frames": "frame-count buckets are not implemented yet; clips are "
                "cut to num_frames"
            },
        ),
        opt(
            "frame_interval",
            int,
            None,
            "Frame-count bucket interval of the resolution_frames strategy.",
            unsupported="frame-count buckets are not implemented yet",
        ),
    ],
)

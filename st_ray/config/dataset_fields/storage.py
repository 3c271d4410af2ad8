"""Dataset fields: where the data lives (local folder, S3, CSV URL list, Hugging Face Hub)."""

from __future__ import annotations

from st_ray.config.dataset_fields.common import AUDIO, VIDEO, group
from st_ray.config.schema import Json, Option, opt

LOCAL: list[Option] = group(
    "Local storage",
    [
        opt(
            "instance_data_dir",
            str,
            None,
            "Folder holding the images and their caption files, searched recursively. For "
            "'aws' SimpleTuner reads aws_data_prefix instead.",
        ),
    ],
)


AWS: list[Option] = group(
    "S3 storage (type 'aws')",
    [
        opt("aws_bucket_name", str, None, "Bucket holding the data (required for 'aws')."),
        opt(
            "aws_data_prefix",
            str,
            "",
            "Key prefix (folder) of the data inside the bucket; empty means the bucket root.",
        ),
        opt("aws_region_name", str, None, "Bucket region; unset lets the S3 client decide."),
        opt(
            "aws_endpoint_url",
            str,
            None,
            "Endpoint of an S3-compatible store (MinIO, R2, ...); unset means AWS.",
        ),
        opt(
            "aws_access_key_id",
            str,
            None,
            "Access key id; unset uses the usual AWS credential chain (environment, profile, "
            "instance role). Prefer {env:VAR} over writing keys into the file.",
            secret=True,
        ),
        opt(
            "aws_secret_access_key",
            str,
            None,
            "Secret access key paired with aws_access_key_id.",
            secret=True,
        ),
        opt(
            "aws_session_token",
            str,
            None,
            "Session token for temporary credentials (read by SimpleTuner's code, not in its "
            "dataloader guide).",
            secret=True,
        ),
    ],
)


CSV: list[Option] = group(
    "CSV URL list (type 'csv')",
    [
        opt(
            "csv_file",
            str,
            None,
            "CSV file listing image URLs and captions (required for 'csv').",
        ),
        opt(
            "csv_cache_dir",
            str,
            None,
            "Folder where downloaded images are kept (required for 'csv'). It only grows.",
            no_effect="st_ray reads csv image paths in place and never downloads URLs",
        ),
        opt(
            "csv_caption_column",
            str,
            None,
            "CSV column with the captions; use with caption_strategy 'csv'.",
        ),
        opt("csv_url_column", str, None, "CSV column with the image URLs."),
    ],
)


HUB: list[Option] = group(
    "Hugging Face Hub (type 'huggingface')",
    [
        opt(
            "dataset_name",
            str,
            None,
            "Hub dataset id, e.g. 'user/dataset' (required for 'huggingface'; may also sit in "
            "the huggingface block).",
        ),
        opt("split", str, "train", "Dataset split to load."),
        opt(
            "revision",
            str,
            None,
            "Revision (branch, tag or commit) of the Hub dataset; unset: main. Not inherited: "
            "the run-wide revision is the base model's.",
        ),
        opt("image_column", str, "image", "Column holding the images."),
        opt(
            "caption_column",
            str,
            None,
            "Caption column, as shown at the top level in SimpleTuner's Hub guide; SimpleTuner's "
            "code reads it from the huggingface block (default 'caption'), which takes "
            "precedence.",
        ),
        opt(
            "fallback_caption_column",
            str,
            None,
            "Column used when the caption column is empty (top-level form of "
            "huggingface.fallback_caption_column).",
        ),
        opt(
            "num_proc",
            int,
            None,
            "Processes used to filter the dataset on load (SimpleTuner default 16).",
            minimum=1,
            no_effect="Ray Data parallelises the work instead of datasets' worker processes",
        ),
        opt(
            "streaming",
            bool,
            False,
            "Stream the dataset instead of downloading it.",
            unsupported="SimpleTuner documents streaming as non-functional: buckets need the "
            "whole dataset's metadata",
        ),
        opt("video_column", str, "video", "Column holding videos.", unsupported=VIDEO),
        opt("audio_column", str, "audio", "Column holding audio.", unsupported=AUDIO),
        opt(
            "huggingface",
            Json,
            None,
            "Hub options block: caption/size columns, filters, cache folder... (see "
            "HUGGINGFACE_FIELDS).",
        ),
    ],
)

"""Dataset fields: identity and kind of an entry (id, backend type, dataset type, links)."""

from __future__ import annotations

from st_ray.config.dataset_fields.common import (
    AUDIO,
    COND_EMBEDS,
    IMAGE_EMBEDS,
    MEMORY,
    WEBSHART,
    group,
)
from st_ray.config.schema import Option, opt

IDENTITY: list[Option] = group(
    "Identity and kind",
    [
        opt(
            "id",
            str,
            None,
            "Unique name of the dataset. Keep it stable: caches and bucket state are keyed by it.",
            required=True,
        ),
        opt(
            "type",
            str,
            "local",
            "Storage backend holding the data: 'local' (a folder), 'aws' (S3 or an "
            "S3-compatible store), 'csv' (a CSV list of image URLs) or 'huggingface' (a Hub "
            "dataset). A parquet/JSONL metadata table is not a type: set metadata_backend "
            "'parquet' and a 'parquet' block on any backend.",
            choices=("local", "aws", "csv", "huggingface", "memory", "webshart"),
            unsupported_values={"memory": MEMORY, "webshart": WEBSHART},
        ),
        opt(
            "dataset_type",
            str,
            "image",
            "What the entry holds: 'image' training samples, 'video' training clips (mp4, "
            "webm, mov, gif; the 'video' block sets their length), 'eval' images the evaluation "
            "loss is measured on (cached like images, never trained on), 'conditioning' images "
            "paired file by file with an image dataset (conditioning_data), or 'text_embeds', "
            "the cache that stores text-encoder outputs (one entry with default true is "
            "needed).",
            choices=(
                "image",
                "text_embeds",
                "image_embeds",
                "conditioning_image_embeds",
                "conditioning",
                "video",
                "audio",
                "eval",
                "caption",
            ),
            unsupported_values={
                "image_embeds": IMAGE_EMBEDS,
                "conditioning_image_embeds": COND_EMBEDS,
                "audio": AUDIO,
                "caption": "caption-only (text-only) datasets are not implemented yet",
            },
        ),
        opt(
            "disabled",
            bool,
            False,
            "Skip this entry entirely, without deleting it from the file.",
            aliases=("disable",),
        ),
        opt(
            "default",
            bool,
            False,
            "text_embeds only: the text-embed cache that datasets without a 'text_embeds' field "
            "use, and where validation-prompt embeds are stored.",
        ),
        opt(
            "text_embeds",
            str,
            None,
            "image only: id of the text_embeds dataset caching this dataset's caption embeds. "
            "Unset: the text_embeds dataset marked default.",
            aliases=("text_embed_cache",),
        ),
        opt(
            "image_embeds",
            str,
            None,
            "image only: id of an image_embeds dataset that stores this dataset's VAE latents.",
            unsupported=IMAGE_EMBEDS,
        ),
        opt(
            "is_regularisation_data",
            bool,
            False,
            "Regularisation (prior-preservation) data: the training target for these samples "
            "is the base model's own prediction (the denoiser with the LoRA/LyCORIS adapter "
            "switched off) rather than the image. Needs model_type 'lora'.",
            aliases=("is_regularization_data",),
        ),
        opt(
            "disable_validation",
            bool,
            False,
            "Never take validation inputs (reference images) from this dataset. Only models "
            "that validate from dataset images use it; for text-to-image training it has no "
            "effect.",
            no_effect="validation renders from prompts, not from dataset images",
        ),
    ],
)

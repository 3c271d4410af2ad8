"""Dataset fields of other dataset kinds: conditioning datasets, the video block, and kinds
st_ray does not implement yet (audio, grounding, webshart, memory), accepted at their defaults
and refused otherwise with the reason."""

from __future__ import annotations

from st_ray.config.dataset_fields.common import (
    AUDIO,
    COND_EMBEDS,
    CONDITIONING_GENERATORS,
    GROUNDING,
    MEMORY,
    REFERENCES,
    WEBSHART,
    group,
)
from st_ray.config.schema import Json, Option, opt

OTHER_KINDS: list[Option] = group(
    "Conditioning, video, audio and other dataset kinds",
    [
        opt(
            "conditioning_data",
            Json,
            None,
            "image/eval only: id (or list of ids) of the conditioning datasets paired with it, "
            "file by file: a conditioning image pairs with the image of the same relative path "
            "and stem (any image extension). Images without a pair are skipped and listed.",
        ),
        opt(
            "conditioning",
            Json,
            None,
            "Generators that derive conditioning datasets from these images (canny, depth, "
            "masks, superresolution, jpeg_artifacts...).",
            unsupported=CONDITIONING_GENERATORS,
        ),
        opt(
            "conditioning_type",
            str,
            None,
            "conditioning only: 'controlnet' (control images for controlnet training, the "
            "default), 'mask' (loss masks: white trains, black is ignored), 'segmentation' "
            "(loss masks applied in a masked_loss_probability share of batches), "
            "'reference_strict' or 'reference_loose' (edit-model references).",
            choices=(
                None,
                "controlnet",
                "mask",
                "segmentation",
                "reference_strict",
                "reference_loose",
            ),
            unsupported_values={
                "reference_strict": REFERENCES,
                "reference_loose": REFERENCES,
            },
        ),
        opt(
            "source_dataset_id",
            str,
            None,
            "conditioning only: the image dataset this one pairs with (the same link as that "
            "dataset's conditioning_data).",
        ),
        opt(
            "conditioning_image_embeds",
            str,
            None,
            "id of a conditioning_image_embeds dataset caching image-encoder features.",
            unsupported=COND_EMBEDS,
        ),
        opt(
            "cache_dir_conditioning_image_embeds",
            str,
            None,
            "Folder for the conditioning image-encoder features.",
            unsupported=COND_EMBEDS,
        ),
        opt(
            "conditioning_image_embed_batch_size",
            int,
            None,
            "Batch size while computing conditioning image embeds.",
            unsupported=COND_EMBEDS,
        ),
        opt(
            "video",
            Json,
            None,
            'video only: {"num_frames", "min_frames", "max_frames", "is_i2v", '
            '"bucket_strategy"} (the video block).',
        ),
        opt(
            "audio",
            Json,
            None,
            "Audio options (duration buckets, sample rate, channels, audio taken from video).",
            unsupported=AUDIO,
        ),
        opt(
            "s2v_datasets",
            Json,
            None,
            "Audio datasets linked to a video dataset for sound-to-video training.",
            unsupported=AUDIO,
        ),
        opt(
            "grounding",
            Json,
            None,
            "Per-entity bounding boxes/masks from .bbox sidecars or auto-detection.",
            unsupported=GROUNDING,
        ),
        opt(
            "webshart",
            Json,
            None,
            "Options of a webshart backend (cache_dir, shard_cache_gb, parallel_downloads...).",
            unsupported=WEBSHART,
        ),
        opt("source", str, None, "webshart only: the shard source.", unsupported=WEBSHART),
        opt(
            "metadata",
            str,
            None,
            "webshart only: separate location of the shard metadata.",
            unsupported=WEBSHART,
        ),
        opt(
            "webshart_optimize_captions",
            bool,
            False,
            "webshart only: coalesce caption sidecars at start-up.",
            unsupported=WEBSHART,
        ),
        opt(
            "memory_filesystem_path",
            str,
            None,
            "memory only: mount point of the RAM filesystem.",
            unsupported=MEMORY,
        ),
        opt(
            "memory_filesystem_size",
            str,
            None,
            "memory only: size of the RAM filesystem, e.g. '512G'.",
            unsupported=MEMORY,
        ),
        opt(
            "memory_filesystem_sudo",
            bool,
            False,
            "memory only: mount through sudo.",
            unsupported=MEMORY,
        ),
    ],
)

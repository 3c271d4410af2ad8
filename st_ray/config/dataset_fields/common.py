"""What the dataset-field modules share: the group helper and the reasons given by several
unsupported fields or values."""

from __future__ import annotations

import dataclasses

from st_ray.config.schema import Option

# Reasons shared by several unsupported fields or values.
VIDEO = "video datasets are not implemented yet"
AUDIO = "audio datasets are not implemented yet"
CONDITIONING_GENERATORS = (
    "conditioning generators (canny, depth, ...) are not implemented yet; give a conditioning "
    "dataset of ready-made images instead"
)
REFERENCES = (
    "edit-model reference images (for image-editing model flavours) are not implemented yet"
)
IMAGE_EMBEDS = (
    "separate image_embeds datasets are not implemented yet; latents go to each image "
    "dataset's cache_dir_vae"
)
COND_EMBEDS = "conditioning image embeds (image-encoder features) are not implemented yet"
SCHEDULE = "per-dataset start/end scheduling is not implemented yet"
ONDEMAND = (
    "st_ray precomputes every latent and text embed before training; encoding during "
    "training is not implemented yet"
)
WEBSHART = "webshart (WebDataset tar shard) datasets are not implemented yet"
MEMORY = "tmpfs/RAM-disk cache backends are not implemented yet; use type 'local'"
GROUNDING = "grounding (bounding-box annotations) is not implemented yet"


def group(title: str, fields: list[Option]) -> list[Option]:
    """``fields`` listed under ``title`` (the group the option catalog gives run-wide options)."""
    return [dataclasses.replace(f, group=title) for f in fields]

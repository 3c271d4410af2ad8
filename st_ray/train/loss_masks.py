"""Loss masks from paired conditioning images (``conditioning_type`` 'mask' / 'segmentation').

A batch of a dataset whose conditioning datasets are masks carries them as
``conditioning_pixels`` (data_feed.collate); the mask, area-resized to the latent size
(``losses.loss_mask_from_conditioning``), weights the loss per latent pixel. 'mask' datasets
always apply it; 'segmentation' datasets in a ``masked_loss_probability`` share of batches,
as SimpleTuner does. With ``conditioning_multidataset_sampling`` 'combined' the masks of a
sample multiply: a latent pixel trains as much as every mask lets it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from st_ray.data.conditioning_links import MASK_KINDS, image_conditioning_kind
from st_ray.train.losses import loss_mask_from_conditioning


def mask_kinds(datasets: Sequence[Any]) -> dict[str, str]:
    """Image dataset id -> its mask conditioning_type, for datasets paired with masks."""
    kinds = {d.id: image_conditioning_kind(datasets, d) for d in datasets if d.holds_images}
    return {i: k for i, k in kinds.items() if k in MASK_KINDS}


def batch_mask(
    kinds: Mapping[str, str],
    batch: Mapping[str, Any],
    size: Sequence[int],
    probability: float,
    generator: torch.Generator,
) -> torch.Tensor | None:
    """The (B, 1, *size) loss mask of ``batch``, or None when its dataset has no masks (or a
    segmentation dataset's draw skips masking this batch)."""
    kind = kinds.get(str(batch.get("dataset_id")))
    pixels = batch.get("conditioning_pixels")
    if kind is None or pixels is None:
        return None
    if kind == "segmentation" and float(torch.rand(1, generator=generator)) >= probability:
        return None
    mask = None
    for k in range(pixels.shape[1]):
        one = loss_mask_from_conditioning(pixels[:, k], size, kind)
        mask = one if mask is None else mask * one
    return mask

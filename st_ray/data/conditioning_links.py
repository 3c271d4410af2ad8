"""Which conditioning datasets pair with which image datasets (checked at load time by
st_ray.config.conditioning_checks).

An image (or eval) dataset names its conditioning datasets with ``conditioning_data`` (an id or
a list of ids), or a conditioning dataset names its image dataset with ``source_dataset_id``;
either link pairs them, as in SimpleTuner. All conditioning datasets of one image dataset share
one ``conditioning_type`` (SimpleTuner: "only one or the other may be used"); a conditioning
dataset without ``conditioning_type`` holds ControlNet inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CONDITIONING = "conditioning"
DEFAULT_KIND = "controlnet"
MASK_KINDS = ("mask", "segmentation")


def conditioning_kind(entry: Any) -> str:
    """A conditioning dataset's conditioning_type (controlnet when unset)."""
    return str(entry.fields.get("conditioning_type") or DEFAULT_KIND)


def named_ids(value: Any) -> list[str]:
    """conditioning_data as a list of ids ([] when unset)."""
    if value in (None, "", []):
        return []
    return [value] if isinstance(value, str) else list(value)


def conditioning_of(entries: Sequence[Any], image: Any) -> list[Any]:
    """The conditioning datasets paired with ``image``, in conditioning_data order, then those
    that name it with source_dataset_id."""
    by_id = {e.id: e for e in entries if e.dataset_type == CONDITIONING}
    linked = [by_id[i] for i in named_ids(image.fields.get("conditioning_data")) if i in by_id]
    linked += [
        e
        for e in by_id.values()
        if e.fields.get("source_dataset_id") == image.id and e not in linked
    ]
    return linked


def image_conditioning_kind(entries: Sequence[Any], image: Any) -> str | None:
    """The conditioning_type of ``image``'s conditioning datasets (None without any)."""
    linked = conditioning_of(entries, image)
    return conditioning_kind(linked[0]) if linked else None

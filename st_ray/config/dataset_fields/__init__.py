"""The fields of a multidatabackend.json dataset entry and its parquet/huggingface blocks.

Fields an entry inherits from the run-wide option of the same name (``resolution``,
``caption_strategy``, ``write_batch_size``...) are not declared here: the option carries
``dataset_field=True`` and the field is derived from it (same type, choices, default and help).
The modules of this package declare only the fields that exist per dataset alone, by concern:
``identity``, ``storage``, ``metadata`` (captions), ``images`` (sizes), ``sampling``, ``caches``,
``other_kinds`` (not implemented yet) and ``blocks`` (the nested parquet/huggingface/video blocks).
"""

from __future__ import annotations

import dataclasses

from st_ray.config.dataset_fields import (
    caches,
    identity,
    images,
    metadata,
    other_kinds,
    sampling,
    storage,
)
from st_ray.config.dataset_fields.blocks import HUGGINGFACE_FIELDS, PARQUET_FIELDS, VIDEO_FIELDS
from st_ray.config.options import OPTIONS
from st_ray.config.schema import Option, Support

__all__ = [
    "FIELDS",
    "HUGGINGFACE_FIELDS",
    "INHERITED_GROUP",
    "PARQUET_FIELDS",
    "SAME_NAME_OTHER_MEANING",
    "VIDEO_FIELDS",
    "inherited_field",
]

# Declared in this package under the name of a run-wide option that means something else for
# one dataset, so an entry does not inherit that option.
SAME_NAME_OTHER_MEANING = frozenset({"revision", "cache_dir", "cache_dir_vae"})
INHERITED_GROUP = "Run-wide options a dataset may set for itself (unset: the run-wide value)"


def inherited_field(option: Option) -> Option:
    """The dataset field of a run-wide option marked ``dataset_field``: the option itself,
    listed under the dataset group, unsupported where an entry's own value is not honoured."""
    field = dataclasses.replace(option, group=INHERITED_GROUP)
    if option.dataset_unsupported and option.support is Support.YES:
        field = dataclasses.replace(field, support=Support.NO, note=option.dataset_unsupported)
    return field


FIELDS: list[Option] = [
    *identity.IDENTITY,
    *storage.LOCAL,
    *storage.AWS,
    *storage.CSV,
    *storage.HUB,
    *metadata.METADATA,
    *images.SIZES,
    *sampling.SAMPLING,
    *caches.CACHES,
    *other_kinds.OTHER_KINDS,
    *(inherited_field(o) for o in OPTIONS if o.dataset_field),
]


def _check_declared_once(fields: list[Option]) -> None:
    """Each name once; a field named like a run-wide option is that option's derived field,
    unless it is one of the few that mean something else per dataset."""
    catalog = {key for o in OPTIONS for key in (o.name, *o.aliases)}
    seen: set[str] = set()
    for field in fields:
        for key in (field.name, *field.aliases):
            if key in seen:
                raise RuntimeError(f"dataset field {key!r} is declared twice")
            seen.add(key)
            if key in catalog and not field.dataset_field and key not in SAME_NAME_OTHER_MEANING:
                raise RuntimeError(
                    f"dataset field {key!r} is also a run-wide option: mark the option "
                    "dataset_field=True instead of declaring the field again"
                )


_check_declared_once(FIELDS)

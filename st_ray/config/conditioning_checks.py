"""Checks of the links between image datasets and their conditioning datasets, at load time.

The links (``conditioning_data`` on an image or eval dataset, ``source_dataset_id`` on a
conditioning dataset) are followed at run time by ``st_ray.data.conditioning_links``; this
module only validates them (config imports no component, so it reads the two fields itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from st_ray.config.errors import ProblemList

CONDITIONING = "conditioning"


def named_ids(value: Any) -> list[str]:
    """conditioning_data as a list of ids ([] when unset)."""
    if value in (None, "", []):
        return []
    return [value] if isinstance(value, str) else list(value)


def _linked(enabled: Sequence[Any], image: Any) -> list[Any]:
    named = set(named_ids(image.fields.get("conditioning_data")))
    return [
        e
        for e in enabled
        if e.dataset_type == CONDITIONING
        and (e.id in named or e.fields.get("source_dataset_id") == image.id)
    ]


def check_links(enabled: Sequence[Any], source: str, problems: ProblemList) -> None:
    """conditioning_data / source_dataset_id name enabled datasets of the right kind, every
    conditioning dataset is paired, and one image dataset's conditioning shares one type."""
    by_id = {e.id: e for e in enabled}
    paired: set[str] = set()
    for entry in enabled:
        where = f"{source} [entry {entry.index}] (id '{entry.id}')"
        value = entry.fields.get("conditioning_data")
        ids = named_ids(value)
        if ids and not all(isinstance(i, str) and i for i in ids):
            problems.add(
                where, "conditioning_data", f"expected an id or a list of ids, got {value!r}"
            )
            continue
        if ids and not entry.holds_images:
            problems.add(
                where,
                "conditioning_data",
                f"only image and eval datasets pair with conditioning data, not "
                f"'{entry.dataset_type}' datasets",
            )
            continue
        for wanted in ids:
            target = by_id.get(wanted)
            if target is None or target.dataset_type != CONDITIONING:
                known = sorted(e.id for e in enabled if e.dataset_type == CONDITIONING)
                problems.add(
                    where,
                    "conditioning_data",
                    f"names '{wanted}', which is not an enabled dataset with "
                    f'"dataset_type": "conditioning"; known: {", ".join(known) or "none"}',
                )
        source_id = entry.fields.get("source_dataset_id")
        if source_id and entry.dataset_type != CONDITIONING:
            problems.add(where, "source_dataset_id", "applies to conditioning datasets only")
        elif source_id and (source_id not in by_id or not by_id[source_id].holds_images):
            problems.add(
                where,
                "source_dataset_id",
                f"names '{source_id}', which is not an enabled image or eval dataset",
            )
        if entry.holds_images:
            linked = _linked(enabled, entry)
            paired |= {e.id for e in linked}
            kinds = sorted({e.fields.get("conditioning_type") or "controlnet" for e in linked})
            if len(kinds) > 1:
                problems.add(
                    where,
                    "conditioning_data",
                    f"pairs conditioning datasets of different conditioning_type ({', '.join(kinds)}); "
                    "one image dataset takes one kind of conditioning, as in SimpleTuner",
                )
    for entry in enabled:
        if entry.dataset_type == CONDITIONING and entry.id not in paired:
            problems.add(
                f"{source} [entry {entry.index}] (id '{entry.id}')",
                "dataset_type",
                "this conditioning dataset is paired with no image dataset: name it in an image "
                "dataset's conditioning_data, or set its source_dataset_id",
            )

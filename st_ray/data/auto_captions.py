"""Captions for the images a dataset's caption_strategy leaves without one, made on Ray Data
with the dataset's captioning_model and saved beside the data (st_ray.data.captioning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from st_ray.config.datasets import DatasetEntry
from st_ray.data import captioning, discovery
from st_ray.data.captions import resolve_captions
from st_ray.placement import ActorRequest
from st_ray.storage import S3Settings


def caption_missing(
    entry: DatasetEntry,
    rows: list[dict[str, Any]],
    s3: S3Settings | None,
    actors: ActorRequest,
) -> list[dict[str, Any]]:
    """Caption, with the dataset's captioning_model, the images its caption_strategy leaves
    without a caption; save the captions beside the data so people can review them and later
    runs reuse them. Returns the rows with their new captions attached."""
    import ray.data

    fields = entry.fields
    output = str(fields.get("caption_output") or "sidecar")
    table = None
    if output == "parquet":
        table = str(Path(str(fields["instance_data_dir"])) / captioning.GENERATED_CAPTIONS_FILE)
    saved = captioning.read_generated_captions(table)
    for row in rows:
        row["generated_caption"] = saved.get(row["image_id"])
    todo = [row for row in rows if _lacks_caption(entry, row)]
    if todo:
        captioned = (
            ray.data.from_items(todo)
            .map_batches(_with_image_bytes, fn_kwargs={"s3": s3}, batch_format="numpy")
            .map_batches(
                captioning.ModelCaptioner,
                fn_constructor_kwargs={
                    "model_path": str(fields["captioning_model"]),
                    "prompt": fields.get("captioning_prompt"),
                    "max_new_tokens": int(fields.get("captioning_max_new_tokens") or 32),
                    "device": "auto",
                },
                **actors.map_batches_args(),
                batch_size=int(fields.get("captioning_batch_size") or 8),
                batch_format="numpy",
            )
            .select_columns(["image_id", "uri", captioning.CAPTION_COLUMN])
            .take_all()
        )
        captioning.write_generated_captions(captioned, output, table)
        saved = captioning.read_generated_captions(table)
        for row in captioned:
            saved.setdefault(row["image_id"], row[captioning.CAPTION_COLUMN])
    for row in rows:
        row["generated_caption"] = saved.get(row["image_id"])
        if output == "sidecar" and row["generated_caption"] and not row.get("caption_uri"):
            sidecar = captioning.sidecar_path(row["uri"])
            row["caption_uri"] = str(sidecar) if sidecar.is_file() else None
    return rows


def _lacks_caption(entry: DatasetEntry, row: dict[str, Any]) -> bool:
    """Decided from the listing alone: a sidecar that exists counts as a caption."""
    if row.get("generated_caption"):
        return False
    return not resolve_captions(
        str(entry["caption_strategy"]),
        image_id=row["image_id"],
        sidecar_text="present" if row.get("caption_uri") else None,
        meta_caption=row.get("meta_caption"),
        meta_fallback=row.get("meta_fallback_caption"),
        entry_fields=entry.fields,
    )


def _with_image_bytes(batch: dict[str, Any], s3: S3Settings | None) -> dict[str, Any]:
    rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["image_id"]))]
    return {
        "image_id": batch["image_id"],
        "uri": batch["uri"],
        "image_bytes": np.array([discovery.read_image_bytes(r, s3) for r in rows], dtype=object),
    }

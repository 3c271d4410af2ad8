"""Aspect buckets at the dataset level: images per bucket, the buckets that can fill a batch
on every rank, and the repeats each needs to fill one effective batch (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from st_ray.data.bucketing import ImagePlan, Size


def prune_buckets(
    bucket_counts: Mapping[Size, int],
    batch_size: int,
    world_size: int,
    disable_pruning: bool,
    repeats: int = 0,
) -> tuple[dict[Size, int], dict[Size, int]]:
    """Split buckets into (kept, dropped) by whether they can fill one batch on every rank.

    A bucket is dropped when ``count * (repeats + 1) < batch_size * world_size``.
    disable_bucket_pruning keeps everything. (SimpleTuner prunes at ``batch_size`` and then
    refuses, at the rank split, any bucket below batch x GPUs x grad-accum; st_ray drops the
    buckets that cannot give each rank a batch and leaves the accumulation check to
    ``effective_repeats``.)
    """
    if disable_pruning:
        return dict(bucket_counts), {}
    need = batch_size * world_size
    kept: dict[Size, int] = {}
    dropped: dict[Size, int] = {}
    for bucket, count in bucket_counts.items():
        (kept if count * (repeats + 1) >= need else dropped)[bucket] = count
    return kept, dropped


def effective_repeats(
    num_images: int,
    repeats: int,
    batch_size: int,
    world_size: int,
    grad_accum: int,
    allow_oversubscription: bool,
) -> int:
    """The repeats to use so ``num_images`` can fill one effective batch.

    repeats 0 = each image once per epoch; n = n + 1 times. The effective batch is
    train_batch_size x GPUs x gradient_accumulation_steps. When num_images * (repeats + 1)
    is below it: with allow_dataset_oversubscription and no repeats set (0), repeats become
    ceil(effective / num_images) - 1 (25 images, 8 GPUs, batch 4 -> 1); otherwise ValueError.
    SimpleTuner applies this per aspect bucket: call it with a bucket's count, or use
    ``bucket_repeats``.
    """
    return bucket_repeats(
        {(0, 0): num_images}, repeats, batch_size, world_size, grad_accum, allow_oversubscription
    )[(0, 0)]


def bucket_repeats(
    bucket_counts: Mapping[Size, int],
    repeats: int,
    batch_size: int,
    world_size: int,
    grad_accum: int,
    allow_oversubscription: bool,
    dataset_id: str = "dataset",
) -> dict[Size, int]:
    """``effective_repeats`` for every bucket, raising one error that lists every short one."""
    effective = batch_size * world_size * grad_accum
    result: dict[Size, int] = {}
    short: dict[Size, tuple[int, int]] = {}
    for bucket, count in bucket_counts.items():
        if count > 0 and count * (repeats + 1) >= effective:
            result[bucket] = repeats
            continue
        needed = math.ceil(effective / count) - 1 if count > 0 else None
        if needed is not None and allow_oversubscription and repeats == 0:
            result[bucket] = needed
        else:
            short[bucket] = (count, -1 if needed is None else needed)
    if short:
        raise ValueError(
            _short_message(dataset_id, short, repeats, batch_size, world_size, grad_accum)
        )
    return result


def _short_message(
    dataset_id: str,
    short: Mapping[Size, tuple[int, int]],
    repeats: int,
    batch_size: int,
    world_size: int,
    grad_accum: int,
) -> str:
    effective = batch_size * world_size * grad_accum
    lines = [
        f"{dataset_id}: too few images to form one batch: the effective batch is "
        f"train_batch_size {batch_size} x {world_size} GPU(s) x gradient_accumulation_steps "
        f"{grad_accum} = {effective} samples, with repeats {repeats}."
    ]
    for (width, height), (count, needed) in short.items():
        where = "the dataset" if (width, height) == (0, 0) else f"bucket {width}x{height}"
        if count <= 0:
            lines.append(f"  {where} has no usable images")
        else:
            lines.append(
                f"  {where}: {count} image(s) x {repeats + 1} = {count * (repeats + 1)} samples; "
                f"needs repeats >= {needed}"
            )
    fixes = "lower train_batch_size or gradient_accumulation_steps, use fewer GPUs, add images, "
    fixes += "or raise repeats"
    if repeats == 0:
        fixes += " (or set allow_dataset_oversubscription to raise it automatically)"
    else:
        fixes += " (allow_dataset_oversubscription never overrides repeats set by hand)"
    lines.append("Fix: " + fixes + ".")
    return "\n".join(lines)


def count_buckets(plans: Iterable[ImagePlan]) -> dict[Size, int]:
    """Images per bucket among the plans that were not skipped."""
    counts: dict[Size, int] = {}
    for plan in plans:
        if plan.bucket is not None:
            counts[plan.bucket] = counts.get(plan.bucket, 0) + 1
    return counts

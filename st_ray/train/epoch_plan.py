"""What each rank trains on: the per-epoch batch plan (pure, no I/O).

``plan_epoch`` turns the cached datasets into a list of global steps.
A global step is ``world_size`` batches of ``batch_size`` samples, all from ONE dataset and
ONE aspect bucket; rank r trains on the r-th batch of every step, so every rank gets exactly
the same number of batches and, at each step, the same latent shape (no rank waits on
another's larger bucket). Per epoch, following SimpleTuner (``documentation/DATALOADER.md``,
``helpers/multiaspect/sampler.py``, ``helpers/metadata/backends/base.py``
``split_buckets_between_processes``, ``helpers/data_backend/factory.py``
``select_dataloader_index`` / ``get_backend_weight``):

* repeats: a dataset is gone through ``repeats + 1`` times, each pass in a fresh order.
* buckets: ``bucket_counts.prune_buckets`` drops the buckets that cannot fill one batch on every
  rank (``count x (repeats+1) < batch x world``), unless disable_bucket_pruning. Every bucket
  left must then reach one effective batch (batch x world x gradient_accumulation_steps):
  ``bucket_counts.bucket_repeats`` raises its repeats with allow_dataset_oversubscription (when
  repeats is 0), else raises an error that lists the short buckets. So with
  disable_bucket_pruning a too-small bucket is kept and trained, through oversubscribed repeats,
  or the run stops with that error (SimpleTuner's split check does the same) -- it is never
  dropped silently.
* remainder: a bucket whose sample count is not a multiple of batch x world gets its last
  global batch filled up with samples from the start of the same bucket's epoch order
  ("wrap"), like SimpleTuner's sampler, which completes a bucket's last batch with already
  seen images of that bucket (``_yield_n_from_exhausted_bucket``). Nothing is dropped, so
  every kept image is trained at least once per epoch; ``EpochPlan.padded`` counts the
  repeats this added. (Older SimpleTuner trimmed each bucket to a multiple of the effective
  batch instead, dropping the remainder.)
* order: samples are shuffled within each bucket, the dataset's global batches are shuffled
  across its buckets, and datasets are interleaved: each step draws one dataset that still has
  batches with chance proportional to its weight, until every dataset is used up. The weight is
  the dataset's ``probability`` for data_backend_sampling "uniform", and ``probability x`` its
  number of batches this epoch for "auto-weighting" (SimpleTuner: probability x dataset length
  / total length), which spreads every dataset evenly over the epoch. So the probabilities
  shape the order, not how often a sample is seen per epoch. A dataset with probability 0 is
  never drawn (not trained).
* reproducible: every random choice comes from a ``torch.Generator`` seeded from (seed, epoch,
  dataset id, bucket), never from the order of the index rows, so a resumed run rebuilds the
  same plan; a different epoch gives a different order.

Resume: ``plan.batches(rank)[start:]`` with ``start`` the number of batches this rank already
trained in the epoch (optimizer steps done in the epoch x gradient_accumulation_steps).

The cache reads that fill the plan's batches: ``st_ray.train.data_feed``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from st_ray.data.bucket_counts import bucket_repeats, prune_buckets
from st_ray.train.plan_steps import PlannedSteps, RankBatches
from st_ray.train.plan_steps import Step as Step  # re-exported
from st_ray.train.samples import Sample, SampleTable, Size

SAMPLING = ("uniform", "auto-weighting")


@dataclass(frozen=True)
class DatasetSamples:
    """A dataset's usable samples and its sampling fields from multidatabackend.json.
    ``samples`` may be given as ``Sample`` objects; it is held as a ``SampleTable``
    (columns: memory per image is ~100 bytes, not ~1.5 KiB)."""

    dataset_id: str
    samples: SampleTable | Sequence[Sample]
    repeats: int = 0
    probability: float = 1.0
    is_regularisation: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.samples, SampleTable):
            table = SampleTable.from_samples(self.dataset_id, self.samples)
            object.__setattr__(self, "samples", table)


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    batch_size: int
    world_size: int
    grad_accum: int
    steps: PlannedSteps
    # Per dataset: repeats used per bucket, buckets pruned (with their image counts), and how
    # many samples were repeated to fill the last batch of a bucket.
    repeats: Mapping[str, Mapping[Size, int]] = field(default_factory=dict)
    pruned: Mapping[str, Mapping[Size, int]] = field(default_factory=dict)
    padded: Mapping[str, int] = field(default_factory=dict)
    regularisation: frozenset[str] = frozenset()

    @property
    def batches_per_rank(self) -> int:
        return len(self.steps)

    def batches(self, rank: int) -> RankBatches:
        """Rank ``rank``'s batches in training order (each a ``list[Sample]``, made when looked
        at), the same count on every rank. To resume within the epoch, slice:
        ``batches(rank)[start:]``."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside 0..{self.world_size - 1}")
        return RankBatches(self.steps, rank * self.batch_size, (rank + 1) * self.batch_size)

    def is_regularisation(self, dataset_id: str) -> bool:
        return dataset_id in self.regularisation


def steps_per_epoch(plan: EpochPlan) -> int:
    """Optimizer steps in the epoch: ceil(batches per rank / gradient_accumulation_steps), as
    SimpleTuner counts them; the last step of an epoch may accumulate fewer batches."""
    return math.ceil(plan.batches_per_rank / plan.grad_accum)


def plan_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The run options ``plan_epoch`` takes, as keyword arguments (seed, epoch and world size
    come from the training loop)."""
    return {
        "batch_size": int(options["train_batch_size"]),
        "grad_accum": int(options.get("gradient_accumulation_steps") or 1),
        "sampling": str(options.get("data_backend_sampling") or "auto-weighting"),
        "disable_bucket_pruning": bool(options.get("disable_bucket_pruning")),
        "allow_oversubscription": bool(options.get("allow_dataset_oversubscription")),
    }


def plan_epoch(
    datasets: Sequence[DatasetSamples],
    *,
    epoch: int,
    seed: int,
    batch_size: int,
    world_size: int,
    grad_accum: int = 1,
    sampling: str = "auto-weighting",
    disable_bucket_pruning: bool = False,
    allow_oversubscription: bool = False,
) -> EpochPlan:
    """The epoch's global steps (see the module docstring for the rules). Raises ValueError
    for a bucket short of one effective batch (see ``bucketing.bucket_repeats``) and when no
    dataset yields a batch."""
    for name, value in (("batch_size", batch_size), ("world_size", world_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    if grad_accum < 1:
        raise ValueError(f"gradient_accumulation_steps must be at least 1, not {grad_accum}")
    if sampling not in SAMPLING:
        raise ValueError(f"data_backend_sampling must be one of {', '.join(SAMPLING)}")
    ids = [d.dataset_id for d in datasets]
    if len(set(ids)) != len(ids):
        raise ValueError(f"dataset ids must be unique: {ids}")

    global_batch = batch_size * world_size
    tables: list[SampleTable] = []
    per_dataset: dict[str, np.ndarray] = {}  # (steps, global batch) sample positions
    used_repeats: dict[str, dict[Size, int]] = {}
    pruned: dict[str, dict[Size, int]] = {}
    padded: dict[str, int] = {}
    # Sorted by id so the plan does not depend on the order datasets were listed in.
    for dataset in sorted(datasets, key=lambda d: d.dataset_id):
        if dataset.probability < 0:
            raise ValueError(f"{dataset.dataset_id}: probability must not be negative")
        if dataset.probability == 0:
            continue
        table = dataset.samples
        by_bucket = _group_by_bucket(table)
        counts = {bucket: len(positions) for bucket, positions in by_bucket.items()}
        kept, dropped = prune_buckets(
            counts, batch_size, world_size, disable_bucket_pruning, dataset.repeats
        )
        repeats = bucket_repeats(
            kept,
            dataset.repeats,
            batch_size,
            world_size,
            grad_accum,
            allow_oversubscription,
            dataset_id=dataset.dataset_id,
        )
        steps: list[np.ndarray] = []
        padded[dataset.dataset_id] = 0
        for bucket in sorted(kept):
            generator = _generator("bucket", seed, epoch, dataset.dataset_id, bucket)
            order = _bucket_order(by_bucket[bucket], repeats[bucket], generator)
            fill = -len(order) % global_batch
            # Wrap: the bucket's first samples of this epoch complete its last global batch.
            order = np.concatenate([order, order[np.arange(fill) % len(order)]])
            padded[dataset.dataset_id] += fill
            steps.append(order.reshape(-1, global_batch))
        matrix = np.concatenate(steps) if steps else np.zeros((0, global_batch), np.int64)
        shuffle = torch.randperm(
            len(matrix), generator=_generator("dataset", seed, epoch, dataset.dataset_id)
        )
        per_dataset[dataset.dataset_id] = matrix[shuffle.numpy()]
        tables.append(table)
        used_repeats[dataset.dataset_id] = repeats
        pruned[dataset.dataset_id] = dropped

    by_id = {d.dataset_id: d for d in datasets}
    weights = {
        dataset_id: _weight(by_id[dataset_id], len(dataset_steps), sampling)
        for dataset_id, dataset_steps in per_dataset.items()
    }
    lengths = {dataset_id: len(m) for dataset_id, m in per_dataset.items()}
    chosen, taken = _interleave(lengths, weights, _generator("interleave", seed, epoch))
    if not len(chosen):
        raise ValueError(
            "no training batches this epoch: every dataset is empty, has probability 0, or "
            f"lost all its buckets to pruning (a bucket needs {global_batch} samples: "
            f"train_batch_size {batch_size} x {world_size} GPU(s)); pruned buckets: "
            f"{ {k: v for k, v in pruned.items() if v} }"
        )
    # per_dataset is in id order, as tables and the ids _interleave numbers.
    first = np.cumsum([0, *(len(m) for m in per_dataset.values())])[:-1]
    rows = np.concatenate(list(per_dataset.values()))[first[chosen] + taken]
    return EpochPlan(
        epoch=epoch,
        batch_size=batch_size,
        world_size=world_size,
        grad_accum=grad_accum,
        steps=PlannedSteps(tables, chosen, rows),
        repeats=used_repeats,
        pruned=pruned,
        padded=padded,
        regularisation=frozenset(d.dataset_id for d in datasets if d.is_regularisation),
    )


def _group_by_bucket(table: SampleTable) -> dict[Size, np.ndarray]:
    """Sample positions per bucket, each in a canonical order first, so shuffles do not
    depend on how the index rows were ordered."""
    keys = table.bucket_keys()
    by_key = np.argsort(keys, kind="stable")
    distinct, starts = np.unique(keys[by_key], return_index=True)
    ends = [*starts[1:].tolist(), len(keys)]
    by_bucket: dict[Size, np.ndarray] = {}
    for key, start, end in zip(distinct.tolist(), starts.tolist(), ends, strict=True):
        bucket = (key >> 32, key & 0xFFFFFFFF)
        by_bucket[bucket] = table.canonical_order(by_key[start:end])
    return by_bucket


def _bucket_order(positions: np.ndarray, repeats: int, generator: torch.Generator) -> np.ndarray:
    """repeats + 1 passes over the bucket, each in a fresh random order."""
    passes = [
        positions[torch.randperm(len(positions), generator=generator).numpy()]
        for _ in range(repeats + 1)
    ]
    return np.concatenate(passes)


def _weight(dataset: DatasetSamples, steps: int, sampling: str) -> float:
    if sampling == "uniform":
        return float(dataset.probability)
    # auto-weighting: SimpleTuner's probability x len(sampler) / total; the common divisor
    # does not change a draw, so it is left out.
    return float(dataset.probability) * steps


def _interleave(
    lengths: Mapping[str, int], weights: Mapping[str, float], generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a dataset per step, in proportion to its weight among those with batches left.
    Returns, per step in training order, the dataset (its number in ``lengths``' order) and
    which of its steps it is."""
    ids = list(lengths)
    active = [d for d in sorted(lengths) if lengths[d] and weights[d] > 0]
    total = sum(lengths[d] for d in active)
    taken = dict.fromkeys(active, 0)
    chosen_at = np.zeros(total, np.int32)
    taken_at = np.zeros(total, np.int64)
    draws = torch.rand(total, generator=generator, dtype=torch.float64).tolist()
    for step, u in enumerate(draws):
        target = u * sum(weights[d] for d in active)
        chosen = active[-1]  # float round-off at the top end
        for dataset_id in active:
            target -= weights[dataset_id]
            if target < 0:
                chosen = dataset_id
                break
        chosen_at[step] = ids.index(chosen)
        taken_at[step] = taken[chosen]
        taken[chosen] += 1
        if taken[chosen] == lengths[chosen]:
            active.remove(chosen)
    return chosen_at, taken_at


def _generator(*parts: Any) -> torch.Generator:
    """A generator seeded from ``parts`` by SHA-256 (not Python's salted hash): the same
    parts give the same stream in every process."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)

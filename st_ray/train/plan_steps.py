"""An epoch plan's steps as index arrays: no Python object per planned sample.

``plan_epoch`` (``epoch_plan``) decides, per global step, one dataset and ``batch_size x
world_size`` of its samples. ``PlannedSteps`` keeps that as two arrays -- the dataset of each
step and an (steps, batch x world) matrix of sample positions in that dataset's
``SampleTable`` -- and makes ``Step`` / ``Sample`` objects only when one is looked at.
``RankBatches`` is one rank's view (its slice of every step): a sequence of batches, each a
``list[Sample]``, sliced for resume without copying the plan.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from st_ray.train.samples import Sample, SampleTable, Size


@dataclass(frozen=True)
class Step:
    """One global step: batch_size x world_size samples of one dataset and bucket."""

    dataset_id: str
    bucket: Size
    samples: tuple[Sample, ...]


class _Lazy(Sequence):
    """Equality and concatenation by value with any sequence (lists in tests and callers)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Sequence) -> list:
        return [*self, *other]

    def __radd__(self, other: Sequence) -> list:
        return [*other, *self]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r})"


class PlannedSteps(_Lazy):
    """The epoch's global steps in training order."""

    def __init__(self, tables: Sequence[SampleTable], dataset: np.ndarray, rows: np.ndarray):
        self.tables = tuple(tables)
        self.dataset = dataset  # (steps,) index into tables
        self.rows = rows  # (steps, batch x world) positions in the step's table
        self.width = rows.shape[1] if rows.ndim == 2 else 0

    def __len__(self) -> int:
        return len(self.dataset)

    @overload
    def __getitem__(self, i: int) -> Step: ...

    @overload
    def __getitem__(self, i: slice) -> PlannedSteps: ...

    def __getitem__(self, i: int | slice) -> Step | PlannedSteps:
        if isinstance(i, slice):
            return PlannedSteps(self.tables, self.dataset[i], self.rows[i])
        table = self.tables[int(self.dataset[i])]
        samples = table.samples(self.rows[i])
        return Step(table.dataset_id, samples[0].bucket, tuple(samples))

    def __iter__(self) -> Iterator[Step]:
        return (self[i] for i in range(len(self)))

    def dataset_ids(self) -> list[str]:
        """The dataset of every step, in order (cheap: no samples made)."""
        return [self.tables[d].dataset_id for d in self.dataset.tolist()]

    def batch(self, i: int, lo: int, hi: int) -> list[Sample]:
        """Samples ``lo:hi`` of step ``i`` (one rank's batch)."""
        return self.tables[int(self.dataset[i])].samples(self.rows[i, lo:hi])


class RankBatches(_Lazy):
    """One rank's batches of an epoch (``lo:hi`` of every step), made on access."""

    def __init__(self, steps: PlannedSteps, lo: int, hi: int) -> None:
        self.steps, self.lo, self.hi = steps, lo, hi

    def __len__(self) -> int:
        return len(self.steps)

    @overload
    def __getitem__(self, i: int) -> list[Sample]: ...

    @overload
    def __getitem__(self, i: slice) -> RankBatches: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return RankBatches(self.steps[i], self.lo, self.hi)
        if not -len(self) <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        return self.steps.batch(i % len(self), self.lo, self.hi)

    def __iter__(self) -> Iterator[list[Sample]]:
        return (self.steps.batch(i, self.lo, self.hi) for i in range(len(self)))

"""A dataset's samples as columns: what a worker holds per cached image, compactly.

``Sample`` is one cached image as the loop and ``collate`` see it. A worker holds every
sample of every dataset for the whole run (the epoch plans are drawn from them), so they
are kept in a ``SampleTable``: numpy columns (content hash as fixed-width bytes, sizes as
int32) and the captions as one Arrow list column -- ~100 bytes a row plus the captions'
text, against ~1.5 KiB for a frozen dataclass with its tuples and strings. ``Sample``
objects are made on access, a batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from st_ray.data.columns import hash_keys, key_text, same_form

Size = tuple[int, int]
NO_SIZE = -1  # original_size None in the int32 columns


@dataclass(frozen=True)
class Sample:
    """One cached image. Sizes are (width, height); ``crop`` is (left, top) inside the resized
    image; ``original_size`` is the source image's size (None: treated as the bucket size)."""

    dataset_id: str
    content_hash: str
    bucket: Size
    captions: tuple[str, ...]
    original_size: Size | None = None
    crop: Size = (0, 0)


class SampleTable(Sequence[Sample]):
    """One dataset's samples, in index order: ``table[i]`` is a ``Sample``."""

    def __init__(
        self,
        dataset_id: str,
        content_hash: tuple[np.ndarray, bool],
        bucket: np.ndarray,
        original: np.ndarray,
        crop: np.ndarray,
        captions: pa.Array,
    ) -> None:
        self.dataset_id = dataset_id
        self.content_hash, self.packed = content_hash  # hash_keys: (S<width>, packed)
        self.bucket = bucket  # (n, 2) int32 width, height
        self.original = original  # (n, 2) int32, NO_SIZE where unknown
        self.crop = crop  # (n, 2) int32 left, top
        self.captions = captions  # list<string>, one list per sample

    @classmethod
    def from_samples(cls, dataset_id: str, samples: Iterable[Sample]) -> SampleTable:
        """A table of ``Sample`` objects (tests, small datasets). Raises ValueError for a sample
        of another dataset."""
        samples = list(samples)
        for sample in samples:
            if sample.dataset_id != dataset_id:
                raise ValueError(
                    f"sample {sample.content_hash} says dataset {sample.dataset_id!r} but is "
                    f"listed in {dataset_id!r}"
                )

        def pairs(values: list) -> np.ndarray:
            return np.array(values, dtype=np.int32).reshape(len(samples), 2)

        return cls(
            dataset_id,
            hash_keys(pa.array([s.content_hash for s in samples], pa.string())),
            pairs([tuple(s.bucket) for s in samples]),
            pairs([tuple(s.original_size or (NO_SIZE, NO_SIZE)) for s in samples]),
            pairs([tuple(s.crop) for s in samples]),
            pa.array([list(s.captions) for s in samples], pa.list_(pa.string())),
        )

    @classmethod
    def from_index(cls, dataset_id: str, index: pa.Table) -> SampleTable:
        """The samples of a latent cache's dataset index (content_hash, bucket_*, original_*,
        crop_*, captions columns), with no Python object per row."""
        if not index.num_rows or "content_hash" not in index.column_names:
            return cls.from_samples(dataset_id, [])

        def ints(name: str, missing: int | None = None) -> np.ndarray:
            column = index.column(name)
            if missing is not None:
                column = pc.fill_null(column, missing)
            elif column.null_count:
                raise ValueError(f"{dataset_id}: the cache index has rows without {name}")
            return column.to_numpy().astype(np.int32)

        def pair(a: str, b: str, missing: int | None = None) -> np.ndarray:
            return np.column_stack([ints(a, missing), ints(b, missing)])

        captions = index.column("captions").combine_chunks()
        return cls(
            dataset_id,
            hash_keys(index.column("content_hash")),
            pair("bucket_width", "bucket_height"),
            pair("original_width", "original_height"),
            pair("crop_left", "crop_top", missing=0),
            captions.cast(pa.list_(pa.string())),
        )

    @classmethod
    def from_batches(cls, dataset_id: str, batches: Iterable[pa.RecordBatch]) -> SampleTable:
        """``from_index`` a batch at a time (the decoded index is never whole in memory)."""
        parts = [cls.from_index(dataset_id, pa.Table.from_batches([b])) for b in batches]
        parts = [p for p in parts if len(p)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls.from_samples(dataset_id, [])
        hashes, packed = same_form([p.content_hash for p in parts], [p.packed for p in parts])
        return cls(
            dataset_id,
            (np.concatenate(hashes), packed),
            np.concatenate([p.bucket for p in parts]),
            np.concatenate([p.original for p in parts]),
            np.concatenate([p.crop for p in parts]),
            pa.concat_arrays([p.captions for p in parts]),
        )

    # Index columns a table is made of.
    INDEX_COLUMNS = (
        "content_hash",
        "bucket_width",
        "bucket_height",
        "original_width",
        "original_height",
        "crop_left",
        "crop_top",
        "captions",
    )

    def __len__(self) -> int:
        return len(self.content_hash)

    @overload
    def __getitem__(self, i: int) -> Sample: ...

    @overload
    def __getitem__(self, i: slice) -> list[Sample]: ...

    def __getitem__(self, i: int | slice) -> Sample | list[Sample]:
        if isinstance(i, slice):
            return [self.sample(j) for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")
        return self.sample(i % len(self))

    def __iter__(self) -> Iterator[Sample]:
        return (self.sample(i) for i in range(len(self)))

    def sample(self, i: int) -> Sample:
        width, height = self.original[i].tolist()
        return Sample(
            dataset_id=self.dataset_id,
            content_hash=key_text(self.content_hash[i], self.packed),
            bucket=tuple(self.bucket[i].tolist()),
            captions=self.captions_of(i),
            original_size=None if width == NO_SIZE else (width, height),
            crop=tuple(self.crop[i].tolist()),
        )

    def samples(self, positions: Sequence[int] | np.ndarray) -> list[Sample]:
        return [self.sample(int(i)) for i in positions]

    def captions_of(self, i: int) -> tuple[str, ...]:
        return tuple(self.captions[int(i)].as_py() or ())

    def first_by_hash(self, count: int) -> list[Sample]:
        """The ``count`` samples with the smallest content hashes (ties: index order)."""
        order = np.argsort(self.content_hash, kind="stable")[:count]
        return self.samples(order)

    def bucket_keys(self) -> np.ndarray:
        """One int64 per sample that sorts as its (width, height) tuple does."""
        return (self.bucket[:, 0].astype(np.int64) << 32) | self.bucket[:, 1].astype(np.int64)

    def canonical_order(self, positions: np.ndarray) -> np.ndarray:
        """``positions`` sorted by (content hash, captions, original size or (0, 0), crop):
        an order that does not depend on how the index rows were ordered. Content hashes
        decide but for repeats (an image listed twice), which are sorted on the full key."""
        order = positions[np.argsort(self.content_hash[positions], kind="stable")]
        hashes = self.content_hash[order]
        same = np.flatnonzero(hashes[1:] == hashes[:-1])
        if not len(same):
            return order
        # Runs of equal hashes: [start, end) of each.
        starts = same[np.concatenate([[True], np.diff(same) > 1])]
        ends = np.concatenate([same[:-1][np.diff(same) > 1], [same[-1]]]) + 2
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            run = order[start:end]
            order[start:end] = sorted(run.tolist(), key=self._full_key)
        return order

    def _full_key(self, i: int) -> tuple:
        s = self.sample(i)
        return (s.content_hash, s.captions, s.original_size or (0, 0), s.crop)

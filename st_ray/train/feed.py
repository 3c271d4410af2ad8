"""The per-rank training feed: reads the rows of the next batches while the step computes.

The epoch plan (``epoch_plan.plan_epoch``) is deterministic, so the batches a rank will train
on are known ahead. ``Feed`` walks them -- the rest of the current epoch, then the next
epochs' plans, computed in the background -- and keeps up to ``dataloader_prefetch_qlen``
batches in flight or ready, as long as their payload stays within ``feed_prefetch_mib``
(one batch is always allowed, however large). Reader threads fetch only raw rows (latents,
text embeddings of every caption a sample may use); ``collate``, with its random caption
pick and dropout, stays on the training thread, so the generator is drawn from in the same
order as without read-ahead.

The reader threads share the GIL with the training thread: a reader running Python while the
loop assembles a batch would make it wait up to the interpreter's switch interval (5 ms) at a
time, the tail of the data wait. So for a short quiet window after each ``rows`` call (a
tenth of the time between calls, at most ``QUIET_MAX_S``) -- when the batch after it is
already read -- readers pause before their next row, and the loop has the GIL to itself.

Nothing is cached beyond the read-ahead window, so memory does not grow with the dataset. A
read that fails (a shard gone or corrupt) raises when its batch is due, naming the shard:
the run stops there, never skips.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from st_ray.data.pipeline import caption_hash
from st_ray.train.data_feed import LatentStore, TextEmbedStore, batch_captions
from st_ray.train.epoch_plan import DatasetSamples, plan_epoch, plan_options
from st_ray.train.samples import Sample

MIB = 1024 * 1024
DEFAULT_PREFETCH_MIB = 256
DEFAULT_DEPTH = 10
READER_THREADS = 4  # reads in flight at once (ranged GETs on S3)
THREAD_PREFIX = "st-ray-feed"
QUIET_MAX_S = 0.02  # longest pause of the readers after each batch handed to the loop
QUIET_FRACTION = 0.1  # of the time between batches

Rows = tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]
Planner = Callable[[int], Sequence[list[Sample]]]


def rank_planner(
    datasets: Sequence[DatasetSamples],
    options: Mapping[str, Any],
    *,
    seed: int,
    world_size: int,
    rank: int,
) -> Planner:
    """epoch -> this rank's batches of that epoch (what the loop will train on)."""
    kwargs = plan_options(options)

    def plan(epoch: int) -> Sequence[list[Sample]]:
        return plan_epoch(
            datasets, epoch=epoch, seed=seed, world_size=world_size, **kwargs
        ).batches(rank)

    return plan


@dataclass
class _Ahead:
    samples: list[Sample]
    epoch: int
    left: int  # batches of its epoch after this one
    nbytes: int
    future: Future


class Feed:
    """Read-ahead over a rank's batches: ``expect`` where the loop is, ``rows`` per batch."""

    def __init__(
        self,
        latents: Mapping[str, LatentStore],
        texts: TextEmbedStore,
        *,
        budget_bytes: int = DEFAULT_PREFETCH_MIB * MIB,
        depth: int = DEFAULT_DEPTH,
        planner: Planner | None = None,
        threads: int = READER_THREADS,
    ) -> None:
        if budget_bytes < 1 or depth < 1:
            raise ValueError("the feed needs a positive byte budget and depth")
        self.latents = dict(latents)
        self.texts = texts
        self.budget_bytes = budget_bytes
        self.depth = depth
        self.planner = planner
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=THREAD_PREFIX)
        self._ahead: deque[_Ahead] = deque()
        self._source: Iterator[tuple[list[Sample], int, int]] = iter(())
        self._next: tuple[list[Sample], int, int] | None = None
        self._lock = threading.Lock()
        self.queued_bytes = 0  # payload in flight or ready, not yet handed to the loop
        self.peak_queued_bytes = 0
        self.fetched_bytes = 0  # payload of every batch fetched (the bytes "used")
        self.batches_ahead = 0  # batches served from the read-ahead
        self.batches_direct = 0  # batches read on demand (not the expected next one)
        self._quiet_until = 0.0  # readers pause until then (time.monotonic)
        self._last_rows: float | None = None
        for store in [*self.latents.values(), self.texts]:
            store.rows.before_row = self._yield_to_loop

    @classmethod
    def from_options(
        cls,
        latents: Mapping[str, LatentStore],
        texts: TextEmbedStore,
        options: Mapping[str, Any],
        planner: Planner | None = None,
    ) -> Feed:
        """A feed sized by feed_prefetch_mib and dataloader_prefetch_qlen."""
        mib = options.get("feed_prefetch_mib")
        depth = options.get("dataloader_prefetch_qlen")
        return cls(
            latents,
            texts,
            budget_bytes=int(DEFAULT_PREFETCH_MIB if mib is None else mib) * MIB,
            depth=int(depth or DEFAULT_DEPTH),
            planner=planner,
        )

    # -- the loop's side -----------------------------------------------------------------

    def expect(self, epoch: int, batches: Sequence[list[Sample]]) -> None:
        """The loop trains on ``batches`` next (the rest of ``epoch``, in order). Keeps what
        was read ahead when it is exactly that (the planner already crossed into this
        epoch), else starts over from here."""
        head = self._ahead[0] if self._ahead else None
        if (
            head is not None
            and batches
            and head.epoch == epoch
            and head.left + 1 == len(batches)
            and head.samples == list(batches[0])
        ):
            return
        self._drop()
        self._source = self._walk(epoch, batches)
        self._top_up()

    def rows(self, samples: Sequence[Sample]) -> Rows:
        """(latents by content hash, text embeddings by caption hash) of one batch: from the
        read-ahead when it is the expected next batch (waiting only if it is not read yet),
        else read now."""
        samples = list(samples)
        self._quiet(next_ready=len(self._ahead) > 1 and self._ahead[1].future.done())
        if self._ahead and self._ahead[0].samples == samples:
            ahead = self._ahead.popleft()
            with self._lock:
                self.queued_bytes -= ahead.nbytes
            self.batches_ahead += 1
            self._top_up()
            return ahead.future.result()
        self.batches_direct += 1
        return self._fetch(samples)

    def settle(self) -> None:
        """Wait until every read ahead has finished (figures, tests)."""
        for ahead in list(self._ahead):
            ahead.future.exception()

    def close(self) -> None:
        """Drop what was read ahead and end the reader threads (after their read in flight:
        at most one per thread). The feed reads nothing after this."""
        self._quiet_until = 0.0
        self._drop()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- figures -------------------------------------------------------------------------

    @property
    def bytes_read(self) -> int:
        """Bytes requested from storage by every reader of this feed."""
        stores = [*self.latents.values(), self.texts]
        return sum(store.rows.bytes_read for store in stores)

    # -- internals -----------------------------------------------------------------------

    def _quiet(self, next_ready: bool) -> None:
        """Start a quiet window for the readers (see the module docstring)."""
        now = time.monotonic()
        if self._last_rows is not None and next_ready:
            self._quiet_until = now + min(QUIET_MAX_S, QUIET_FRACTION * (now - self._last_rows))
        self._last_rows = now

    def _yield_to_loop(self) -> None:
        """A reader's pause before each row: sleeps out the quiet window (never the loop's
        own thread, which reads on demand)."""
        if not threading.current_thread().name.startswith(THREAD_PREFIX):
            return
        while (wait := self._quiet_until - time.monotonic()) > 0:
            time.sleep(wait)

    def _walk(
        self, epoch: int, batches: Sequence[list[Sample]]
    ) -> Iterator[tuple[list[Sample], int, int]]:
        """(batch, epoch, batches left in its epoch after it): this epoch's rest, then the
        planner's next epochs (each planned in a reader thread while the previous is read)."""
        while True:
            upcoming = None
            if self.planner is not None:
                upcoming = self._pool.submit(self.planner, epoch + 1)
            for i, batch in enumerate(batches):
                yield list(batch), epoch, len(batches) - 1 - i
            if upcoming is None or upcoming.exception() is not None:
                return  # the loop plans that epoch itself and reports the error there
            epoch, batches = epoch + 1, upcoming.result()

    def _top_up(self) -> None:
        while len(self._ahead) < self.depth:
            if self._next is None:
                self._next = next(self._source, None)
                if self._next is None:
                    return
            samples, epoch, left = self._next
            nbytes = self._nbytes(samples)
            if self._ahead and self.queued_bytes + nbytes > self.budget_bytes:
                return
            self._next = None
            future = self._pool.submit(self._fetch, samples)
            self._ahead.append(_Ahead(samples, epoch, left, nbytes, future))
            with self._lock:
                self.queued_bytes += nbytes
                self.peak_queued_bytes = max(self.peak_queued_bytes, self.queued_bytes)
                self.fetched_bytes += nbytes

    def _nbytes(self, samples: list[Sample]) -> int:
        try:
            store = self.latents[samples[0].dataset_id]
            latents = store.rows.nbytes(s.content_hash for s in samples)
            texts = self.texts.rows.nbytes(caption_hash(c) for c in batch_captions(samples))
        except KeyError:
            return 0  # the fetch raises the clear error when this batch is due
        return latents + texts

    def _fetch(self, samples: list[Sample]) -> Rows:
        self._yield_to_loop()
        store = self.latents.get(samples[0].dataset_id)
        if store is None:
            raise KeyError(f"no latent cache for dataset {samples[0].dataset_id!r}")
        latents = store.load(s.content_hash for s in samples)
        texts = self.texts.load_captions(batch_captions(samples))
        return latents, texts

    def _drop(self) -> None:
        while self._ahead:
            self._ahead.popleft().future.cancel()
        self._next = None
        self._source = iter(())
        with self._lock:
            self.queued_bytes = 0

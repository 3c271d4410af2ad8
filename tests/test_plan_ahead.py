"""Epoch plans computed once and ahead: the feed's reader thread plans the next epoch and the
loop takes that plan at the boundary (same plan as computing it there)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from st_ray.bench.feed_caches import write_caches
from st_ray.train import data_feed, epoch_plan
from st_ray.train.feed import Feed
from st_ray.train.plan_ahead import EpochPlans
from st_ray.train.samples import Sample


def dataset(n: int = 24) -> epoch_plan.DatasetSamples:
    samples = [
        Sample("d", f"h{i:03d}", (64, 48) if i % 3 else (48, 64), (f"c{i}",)) for i in range(n)
    ]
    return epoch_plan.DatasetSamples("d", samples)


def planner(data: epoch_plan.DatasetSamples, calls: list[tuple[int, int]] | None = None):
    def plan(epoch: int, seed: int) -> epoch_plan.EpochPlan:
        if calls is not None:
            calls.append((epoch, seed))
        return epoch_plan.plan_epoch([data], epoch=epoch, seed=seed, batch_size=2, world_size=1)

    return plan


def test_each_plan_is_computed_once_and_equals_planning_directly() -> None:
    data, calls = dataset(), []
    plans = EpochPlans(planner(data, calls))
    first = plans(1, 7)
    assert plans(1, 7) is first and calls == [(1, 7)]
    direct = epoch_plan.plan_epoch([data], epoch=1, seed=7, batch_size=2, world_size=1)
    assert list(first.batches(0)) == list(direct.batches(0))
    # The seed is part of the key: a resumed run's own seed gets its own plan.
    assert list(plans(1, 8).batches(0)) != list(first.batches(0))


def test_concurrent_callers_share_one_computation() -> None:
    started, release = threading.Event(), threading.Event()
    calls = []
    inner = planner(dataset(), calls)

    def slow(epoch: int, seed: int) -> epoch_plan.EpochPlan:
        started.set()
        release.wait(5)
        return inner(epoch, seed)

    plans = EpochPlans(slow)
    got = []
    reader = threading.Thread(target=lambda: got.append(plans(2, 0)))
    reader.start()
    assert started.wait(5)
    waiter = threading.Thread(target=lambda: got.append(plans(2, 0)))
    waiter.start()
    release.set()
    reader.join(5)
    waiter.join(5)
    assert len(got) == 2 and got[0] is got[1] and calls == [(2, 0)]


def test_a_failed_plan_is_not_kept_and_released_epochs_are_dropped() -> None:
    fail = [True]
    inner = planner(dataset())
    calls = []

    def flaky(epoch: int, seed: int) -> epoch_plan.EpochPlan:
        calls.append(epoch)
        if fail[0]:
            raise ValueError("no training batches")
        return inner(epoch, seed)

    plans = EpochPlans(flaky)
    with pytest.raises(ValueError, match="no training batches"):
        plans(0, 0)
    fail[0] = False
    plans(0, 0)  # computed again, by the caller that asks next
    plans(1, 0)
    plans(2, 0)
    plans.release(1)  # the loop is in epoch 1: epoch 0 leaves, the ones ahead stay
    plans(1, 0)
    plans(2, 0)
    assert calls == [0, 0, 1, 2]
    plans(0, 0)
    assert calls == [0, 0, 1, 2, 0]


def test_the_loop_takes_the_next_epoch_planned_by_the_feed(tmp_path: Path) -> None:
    caches = write_caches(str(tmp_path / "cache"), 12, captions=4, latent_side=2, text_scale=64)
    data = data_feed.load_dataset_samples(caches["vae"], {"id": "bench"})
    calls = []
    inner = planner(data, calls)
    plans = EpochPlans(inner)
    latents = data_feed.LatentStore(caches["vae"])
    texts = data_feed.TextEmbedStore(caches["text"])
    feed = Feed({"bench": latents}, texts, planner=lambda epoch: plans(epoch, 3).batches(0))
    try:
        batches = plans(0, 3).batches(0)
        feed.expect(0, batches)
        for batch in batches:
            feed.rows(batch)
        feed.settle()
        assert calls.count((1, 3)) == 1  # planned by a reader thread while epoch 0 was read
        # What the loop does at the boundary: no second computation of epoch 1.
        got = list(plans(1, 3).batches(0))
        assert calls.count((1, 3)) == 1
        assert got == list(
            epoch_plan.plan_epoch([data], epoch=1, seed=3, batch_size=2, world_size=1).batches(0)
        )
    finally:
        feed.close()

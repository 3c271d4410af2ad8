"""A worker's memory per cached image: samples, epoch plans and row indexes are columns, not
Python objects, and give exactly the batches the object-per-sample planner gave."""

from __future__ import annotations

import hashlib
import json
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from st_ray.bench.feed_caches import write_caches
from st_ray.data.cache_store import CacheStore
from st_ray.data.columns import fixed_width_strings, hash_keys, key_text, unpack_hex
from st_ray.data.row_index import RowIndex
from st_ray.train import data_feed
from st_ray.train.epoch_plan import DatasetSamples, plan_epoch
from st_ray.train.feed import Feed
from st_ray.train.samples import Sample, SampleTable


def test_fixed_width_strings_keep_values_and_order() -> None:
    values = ["b", "abc", "", "zz", "ab", "é"]
    column = pa.chunked_array([pa.array(values[:3]), pa.array(values[3:])])
    fixed = fixed_width_strings(column)
    assert [v.decode() for v in fixed.tolist()] == values
    assert [values[i] for i in np.argsort(fixed, kind="stable")] == sorted(values)


def test_digests_are_packed_to_their_bytes_and_back() -> None:
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(50)]
    digests.append("00" * 31 + "00")  # trailing zero bytes survive the round trip
    packed, ok = hash_keys(pa.array(digests))
    assert ok and packed.dtype == np.dtype("S32")
    assert [key_text(v, True) for v in packed.tolist()] == digests
    assert [digests[i] for i in np.argsort(packed, kind="stable")] == sorted(digests)
    assert [v.decode() for v in unpack_hex(packed).tolist()] == digests
    # Anything else (upper case, other lengths) stays text.
    assert not hash_keys(pa.array([digests[0].upper()]))[1]
    assert not hash_keys(pa.array(["pets-1"]))[1]


def _index_batch(keys: list[str], start: int = 0) -> pa.RecordBatch:
    n = len(keys)
    return pa.RecordBatch.from_pydict(
        {
            "key": keys,
            "shard": pa.array(range(n), pa.int32()),
            "row_group": pa.array([0] * n, pa.int32()),
            "row": pa.array([0] * n, pa.int32()),
            "latent.offset": pa.array(range(start, start + n), pa.int64()),
            "latent.length": pa.array([9] * n, pa.int64()),
            "latent.codec": pa.array([0] * n, pa.int8()),
            "latent.nbytes": pa.array([8] * n, pa.int64()),
            "latent.shape": [[4, 1 + i % 2, 1] for i in range(start, start + n)],
            "latent.dtype": ["float16" if i % 3 else "float32" for i in range(start, start + n)],
        }
    )


@pytest.mark.parametrize("kind", ["digests", "text", "mixed"])
def test_row_index_finds_keys_across_batches(kind: str) -> None:
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(40)]
    text = [f"k{i}" for i in range(40)]
    first, second = {
        "digests": (digests[:25], digests[25:]),
        "text": (text[:25], text[25:]),
        "mixed": (digests[:25], text[25:]),
    }[kind]
    keys = first + second
    index = RowIndex.from_batches(
        ["s"], ["latent"], len(keys), [_index_batch(first), _index_batch(second, len(first))]
    )
    assert index.packed == (kind == "digests")
    found = index.find([*keys, "missing", "ab" * 32])
    assert (found[-2:] == -1).all()
    for i, key in enumerate(keys):
        at = found[i]
        assert index.offset["latent"][at] == i and key in index
        assert index.layouts[index.layout["latent"][at]] == (
            (4, 1 + i % 2, 1),
            "float16" if i % 3 else "float32",
        )
    assert index.key_list() == sorted(keys)


def _dataset(dataset_id: str, buckets: dict, dup: bool = False, **fields) -> DatasetSamples:
    """Samples with several captions, original sizes (some unknown), crops, and (dup) the
    same content hash listed several times with other captions: every part of the sort key."""
    out = []
    for (w, h), n in buckets.items():
        for i in range(n):
            content = f"{dataset_id}-{w}x{h}-{i % 5 if dup else i:03d}"
            captions = tuple(f"c{j} {i}" for j in range(1 + i % 3))
            original = None if i % 4 == 0 else (w + i, h + 2 * i)
            out.append(Sample(dataset_id, content, (w, h), captions, original, (i % 2, i % 3)))
    return DatasetSamples(dataset_id, tuple(reversed(out)), **fields)


# Digests of every rank's batches (all sample fields), computed with the planner that held a
# Sample object per image (before the columnar plan), for these datasets and seed 11.
GOLDEN = {
    "one-0": "54dbf41dd871c02a",
    "one-1": "c7e528e274f75370",
    "mix-0": "3048503aab403fc4",
    "mix-1": "b12579dcd2268a2d",
    "uniform-0": "795374c4e65f4596",
    "uniform-1": "9318c7c0ea10a198",
}


def test_columnar_plan_gives_the_batches_of_the_object_planner() -> None:
    cases = {
        "one": (
            [_dataset("a", {(64, 64): 23, (64, 128): 17, (128, 64): 9})],
            {"batch_size": 2, "world_size": 3},
        ),
        "mix": (
            [
                _dataset("a", {(64, 64): 23, (64, 128): 17}, dup=True, repeats=1),
                _dataset("b", {(64, 64): 14, (96, 64): 30}, probability=2.0),
            ],
            {
                "batch_size": 3,
                "world_size": 2,
                "grad_accum": 2,
                "disable_bucket_pruning": True,
                "allow_oversubscription": True,
            },
        ),
        "uniform": (
            [_dataset("a", {(64, 64): 40}), _dataset("b", {(64, 64): 12})],
            {"batch_size": 1, "world_size": 1, "sampling": "uniform"},
        ),
    }
    for name, (datasets, kwargs) in cases.items():
        for epoch in (0, 1):
            p = plan_epoch(datasets, epoch=epoch, seed=11, **kwargs)
            batches = [
                [
                    [
                        s.dataset_id,
                        s.content_hash,
                        list(s.bucket),
                        list(s.captions),
                        list(s.original_size) if s.original_size else None,
                        list(s.crop),
                    ]
                    for s in batch
                ]
                for rank in range(p.world_size)
                for batch in p.batches(rank)
            ]
            digest = hashlib.sha256(json.dumps(batches).encode()).hexdigest()[:16]
            assert digest == GOLDEN[f"{name}-{epoch}"], (name, epoch)


def test_plans_and_samples_hold_arrays_not_objects(tmp_path: Path) -> None:
    caches = write_caches(
        str(tmp_path / "c"), 60, captions=7, latent_side=2, text_scale=256, rows_per_shard=25
    )
    data = data_feed.load_dataset_samples(caches["vae"], {"id": "bench"})
    assert isinstance(data.samples, SampleTable) and data.samples.packed
    p = plan_epoch([data], epoch=0, seed=3, batch_size=4, world_size=2)
    assert p.steps.rows.shape == (8, 8) and p.steps.rows.dtype.kind == "i"
    full = p.batches(1)
    assert full[2:] == list(full)[2:] and full[-1] == list(full)[-1]
    assert all(len(batch) == 4 and isinstance(batch[0], Sample) for batch in full)
    index = CacheStore(caches["vae"], "latents").row_index(
        CacheStore(caches["vae"], "latents").read_manifest()
    )
    assert index.packed and len(index) == 60


def _retained_per_row(root: Path, rows: int) -> float:
    caches = write_caches(
        str(root), rows, captions=50, latent_side=2, text_scale=256, rows_per_shard=rows
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        data = data_feed.load_dataset_samples(caches["vae"], {"id": "bench"})
        plan = plan_epoch([data], epoch=0, seed=1, batch_size=2, world_size=1)
        latents = data_feed.LatentStore(caches["vae"])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(plan.batches(0)) == rows // 2 and len(latents.rows.index) == rows
    return held / rows


def test_memory_per_cached_image_is_small(tmp_path: Path) -> None:
    # Python-tracked memory (objects and numpy arrays) a worker keeps per image for its
    # samples, one epoch plan and the row index: was ~2.5 KiB with an object per sample.
    small = _retained_per_row(tmp_path / "small", 500)
    large = _retained_per_row(tmp_path / "large", 5000)
    assert large < 400, f"{large:.0f} bytes per image"
    assert large < small  # the fixed part spreads over more rows; no per-row objects


def test_feed_close_ends_its_reader_threads(tmp_path: Path) -> None:
    caches = write_caches(
        str(tmp_path / "c"), 30, captions=5, latent_side=2, text_scale=256, rows_per_shard=10
    )
    data = data_feed.load_dataset_samples(caches["vae"], {"id": "bench"})
    batches = plan_epoch([data], epoch=0, seed=3, batch_size=3, world_size=1).batches(0)
    latents = data_feed.LatentStore(caches["vae"])
    texts = data_feed.TextEmbedStore(caches["text"])
    with Feed({"bench": latents}, texts, depth=4) as feed:
        feed.expect(0, batches)
        feed.rows(batches[0])
        assert any(t.name.startswith("st-ray-feed") for t in threading.enumerate())
    assert not any(t.name.startswith("st-ray-feed") for t in threading.enumerate())


def test_readers_pause_for_a_quiet_window_after_each_batch(tmp_path: Path, monkeypatch) -> None:
    from st_ray.train import feed as feed_module

    clock = {"now": 100.0, "slept": []}

    def sleep(seconds: float) -> None:
        clock["slept"].append(threading.current_thread().name)
        clock["now"] += seconds

    monkeypatch.setattr(feed_module.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(feed_module.time, "sleep", sleep)
    caches = write_caches(
        str(tmp_path / "c"), 12, captions=3, latent_side=2, text_scale=256, rows_per_shard=6
    )
    latents = data_feed.LatentStore(caches["vae"])
    feed = Feed({"bench": latents}, data_feed.TextEmbedStore(caches["text"]))
    try:
        feed._quiet(next_ready=True)  # the first batch: no interval known yet
        assert feed._quiet_until == 0
        clock["now"] += 0.05  # a 50 ms step: 5 ms quiet
        feed._quiet(next_ready=True)
        assert feed._quiet_until == pytest.approx(100.055)
        feed._yield_to_loop()  # the loop's own thread never pauses
        assert clock["slept"] == []
        reader = threading.Thread(target=feed._yield_to_loop, name="st-ray-feed_0")
        reader.start()
        reader.join()
        assert clock["slept"] == ["st-ray-feed_0"] and clock["now"] == pytest.approx(100.055)
        clock["now"] += 10.0  # a long step: the window is capped
        feed._quiet(next_ready=True)
        assert feed._quiet_until - clock["now"] == pytest.approx(feed_module.QUIET_MAX_S)
        clock["now"] += 1.0
        feed._quiet(next_ready=False)  # the next batch is not read: no pause
        assert feed._quiet_until < clock["now"]
        # The readers pause before every row they read.
        assert latents.rows.before_row == feed._yield_to_loop
    finally:
        feed.close()

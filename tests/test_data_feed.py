"""The per-rank data feed: epoch plans (pure) and the cache reads + collate (a hand-built
Parquet cache in tmp_path, no Ray)."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from st_ray.data.cache_store import CacheStore
from st_ray.train.data_feed import (
    LatentStore,
    TextEmbedStore,
    batch_captions,
    collate,
    load_dataset_samples,
)
from st_ray.train.epoch_plan import DatasetSamples, plan_epoch, plan_options, steps_per_epoch
from st_ray.train.samples import Sample

SQUARE, TALL, WIDE = (64, 64), (64, 128), (128, 64)


def dataset(dataset_id: str, buckets: dict, **fields) -> DatasetSamples:
    samples = tuple(
        Sample(dataset_id, f"{dataset_id}-{w}x{h}-{i:03d}", (w, h), (f"caption {i}",))
        for (w, h), count in buckets.items()
        for i in range(count)
    )
    return DatasetSamples(dataset_id, samples, **fields)


def plan(datasets, **kwargs):
    args = {"epoch": 0, "seed": 7, "batch_size": 2, "world_size": 3}
    return plan_epoch(datasets if isinstance(datasets, list) else [datasets], **{**args, **kwargs})


def all_samples(p) -> list[Sample]:
    return [s for rank in range(p.world_size) for batch in p.batches(rank) for s in batch]


# --- planning -------------------------------------------------------------------------------

# 13 samples in 3 buckets; batch 2 x 3 ranks = 6 samples per global step.
AWKWARD = {SQUARE: 7, TALL: 4, WIDE: 2}


def test_equal_batches_per_rank_single_bucket_batches() -> None:
    p = plan(dataset("d", AWKWARD))
    # Pruning keeps only the 7-image bucket (4 and 2 < 6); 7 wraps up to 12 = 2 global steps.
    assert p.pruned == {"d": {TALL: 4, WIDE: 2}}
    assert p.batches_per_rank == 2 and p.padded == {"d": 5}
    per_rank = [p.batches(rank) for rank in range(3)]
    assert [len(b) for b in per_rank] == [2, 2, 2]
    for step in range(2):
        batches = [per_rank[rank][step] for rank in range(3)]
        assert all(len(batch) == 2 for batch in batches)
        # One bucket per batch, and the same bucket on every rank at a step.
        assert len({s.bucket for batch in batches for s in batch}) == 1
    counts = Counter(s.content_hash for s in all_samples(p))
    # Every kept image is trained; 5 of them twice (the wrap-around).
    assert len(counts) == 7 and sorted(counts.values()) == [1, 1, 2, 2, 2, 2, 2]
    assert steps_per_epoch(p) == 2


def test_disable_bucket_pruning_needs_oversubscription() -> None:
    with pytest.raises(ValueError, match=r"bucket 64x128.*\n.*bucket 128x64"):
        plan(dataset("d", AWKWARD), disable_bucket_pruning=True)
    p = plan(dataset("d", AWKWARD), disable_bucket_pruning=True, allow_oversubscription=True)
    # Repeats ceil(6 / n) - 1 for the short buckets: 4 -> 1 (8 samples), 2 -> 2 (6 samples).
    assert p.pruned == {"d": {}}
    assert p.repeats == {"d": {SQUARE: 0, TALL: 1, WIDE: 2}}
    # 7 -> 12 (2 steps), 8 -> 12 (2 steps), 6 -> 6 (1 step); 5 + 4 + 0 samples wrapped.
    assert p.batches_per_rank == 5 and p.padded == {"d": 9}
    counts = Counter(s.content_hash for s in all_samples(p))
    assert [counts[f"d-128x64-{i:03d}"] for i in range(2)] == [3, 3]
    assert sum(counts[f"d-64x128-{i:03d}"] for i in range(4)) == 12
    # Oversubscription alone does not keep pruned buckets.
    p = plan(dataset("d", AWKWARD), allow_oversubscription=True)
    assert p.batches_per_rank == 2


def test_gradient_accumulation_sets_the_minimum_bucket() -> None:
    one_gpu = {"batch_size": 1, "world_size": 1, "grad_accum": 4}
    with pytest.raises(ValueError, match="needs repeats >= 1"):
        plan(dataset("d", {SQUARE: 3}), **one_gpu)
    p = plan(dataset("d", {SQUARE: 3}), allow_oversubscription=True, **one_gpu)
    assert p.repeats == {"d": {SQUARE: 1}} and p.batches_per_rank == 6
    assert steps_per_epoch(p) == 2  # ceil(6 / 4): the last step accumulates 2 batches


def test_repeats_expand_the_dataset() -> None:
    p = plan(dataset("d", {SQUARE: 4}, repeats=2), batch_size=2, world_size=2)
    # 4 images x 3 passes = 12 samples = 3 steps of 4, nothing wrapped.
    assert p.batches_per_rank == 3 and p.padded == {"d": 0}
    assert set(Counter(s.content_hash for s in all_samples(p)).values()) == {3}


def test_same_seed_and_epoch_same_plan_other_epoch_other_order() -> None:
    data = [dataset("a", AWKWARD), dataset("b", {SQUARE: 9, WIDE: 6})]
    kwargs = {"disable_bucket_pruning": True, "allow_oversubscription": True}
    first = plan(data, **kwargs)
    assert plan(data, **kwargs) == first
    # Neither the order of the index rows nor of the dataset list changes the plan.
    shuffled = [
        DatasetSamples(d.dataset_id, tuple(random.Random(1).sample(d.samples, len(d.samples))))
        for d in reversed(data)
    ]
    assert plan(shuffled, **kwargs).steps == first.steps
    other_epoch = plan(data, epoch=1, **kwargs)
    assert other_epoch.steps != first.steps
    # Same images, other order.
    assert {s.content_hash for s in all_samples(other_epoch)} == {
        s.content_hash for s in all_samples(first)
    }
    assert plan(data, seed=8, **kwargs).steps != first.steps


def _share_of_a(datasets, sampling: str, first: int, seeds: int = 300) -> float:
    taken = 0
    for seed in range(seeds):
        p = plan(datasets, seed=seed, batch_size=1, world_size=1, sampling=sampling)
        taken += sum(step.dataset_id == "a" for step in p.steps[:first])
    return taken / (first * seeds)


def test_probability_mixing() -> None:
    # uniform: a dataset is drawn with chance probability / sum of probabilities.
    equal_size = [
        dataset("a", {SQUARE: 20}, probability=3.0),
        dataset("b", {SQUARE: 20}, probability=1.0),
    ]
    assert _share_of_a(equal_size, "uniform", first=10) == pytest.approx(0.75, abs=0.04)
    # auto-weighting: probability x dataset length, so 10 vs 30 batches -> 1/4 for "a" ...
    sizes = [dataset("a", {SQUARE: 10}), dataset("b", {SQUARE: 30})]
    assert _share_of_a(sizes, "auto-weighting", first=8) == pytest.approx(0.25, abs=0.04)
    assert _share_of_a(sizes, "uniform", first=8) == pytest.approx(0.5, abs=0.04)
    # ... and probability 3 for "a" evens it out.
    weighted = [dataset("a", {SQUARE: 10}, probability=3.0), dataset("b", {SQUARE: 30})]
    assert _share_of_a(weighted, "auto-weighting", first=8) == pytest.approx(0.5, abs=0.04)
    # The probabilities shape the order; each dataset is still used up once per epoch.
    p = plan(equal_size, batch_size=1, world_size=1, sampling="uniform")
    assert Counter(step.dataset_id for step in p.steps) == {"a": 20, "b": 20}


def test_probability_zero_and_regularisation() -> None:
    data = [
        dataset("a", {SQUARE: 6}),
        dataset("reg", {SQUARE: 6}, is_regularisation=True),
        dataset("off", {SQUARE: 6}, probability=0.0),
    ]
    p = plan(data)
    assert {step.dataset_id for step in p.steps} == {"a", "reg"}
    assert p.is_regularisation("reg") and not p.is_regularisation("a")
    with pytest.raises(ValueError, match="no training batches"):
        plan([dataset("off", {SQUARE: 6}, probability=0.0)])
    with pytest.raises(ValueError, match="no training batches"):
        plan([dataset("tiny", {SQUARE: 5})])  # pruned: 5 < 6


def test_resume_position() -> None:
    data = [dataset("a", AWKWARD), dataset("b", {SQUARE: 14, TALL: 8})]
    kwargs = {"disable_bucket_pruning": True, "allow_oversubscription": True, "grad_accum": 2}
    p = plan(data, **kwargs)
    for rank in range(3):
        full = p.batches(rank)
        for optimizer_steps_done in range(steps_per_epoch(p) + 1):
            start = min(optimizer_steps_done * p.grad_accum, p.batches_per_rank)
            consumed = full[:start]
            # The resumed run rebuilds the plan (say, from an index listed in another order).
            rebuilt = plan([dataset("b", {TALL: 8, SQUARE: 14}), data[0]], **kwargs)
            assert consumed + rebuilt.batches(rank)[start:] == full
    with pytest.raises(ValueError, match="rank 3"):
        p.batches(3)


def test_plan_options() -> None:
    options = {
        "train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "data_backend_sampling": "uniform",
        "disable_bucket_pruning": True,
        "allow_dataset_oversubscription": False,
    }
    assert plan_options(options) == {
        "batch_size": 4,
        "grad_accum": 2,
        "sampling": "uniform",
        "disable_bucket_pruning": True,
        "allow_oversubscription": False,
    }
    with pytest.raises(ValueError, match="data_backend_sampling"):
        plan(dataset("d", {SQUARE: 6}), sampling="random")


# --- cache reads and collate ----------------------------------------------------------------


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def latent_of(content_hash: str, bucket) -> np.ndarray:
    seed = int(content_hash[:8], 16)
    shape = (4, bucket[1] // 8, bucket[0] // 8)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float16)


def embeds_of(caption: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(sha(caption)[:8], 16))
    return {
        "prompt_embeds": rng.standard_normal((3, 8)).astype(np.float32),
        "pooled_prompt_embeds": rng.standard_normal((5,)).astype(np.float32),
    }


IMAGES = [
    # image_id, bucket (w, h), original (w, h), crop (left, top), captions
    ("cat.png", (64, 48), (100, 75), (2, 0), ["a cat", "a grey cat"]),
    ("dog.png", (64, 48), (128, 96), (0, 0), ["a dog"]),
    ("owl.png", (64, 48), (640, 480), (0, 1), ["an owl"]),
    ("fox.png", (48, 64), (60, 80), (1, 3), ["a fox"]),
    ("elk.png", (48, 64), (48, 64), (0, 0), ["an elk"]),
]


def write_shard(store: CacheStore, run: str, rows: list[dict]) -> str:
    path = Path(store.path) / "shards" / run / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return f"shards/{run}/part-0.parquet"


def latent_row(content_hash: str, bucket, status: str = "ok") -> dict:
    latent = latent_of(content_hash, bucket)
    return {
        "content_hash": content_hash,
        "status": status,
        "latent": latent.tobytes() if status == "ok" else None,
        "latent_shape": list(latent.shape) if status == "ok" else None,
        "latent_dtype": "float16" if status == "ok" else None,
    }


@pytest.fixture
def caches(tmp_path: Path) -> dict:
    """A latent cache (two committed shards, one uncommitted, one skipped row) with its index,
    and a text cache holding every caption and the empty one."""
    hashes = {image_id: sha(image_id) for image_id, *_ in IMAGES}
    buckets = {image_id: bucket for image_id, bucket, *_ in IMAGES}
    latents = CacheStore(str(tmp_path / "vae"), "latents")
    manifest = latents.open({"family": "test"}, override=False)
    first = write_shard(
        latents, "run-1", [latent_row(hashes[i], buckets[i]) for i in ("cat.png", "dog.png")]
    )
    second = write_shard(
        latents,
        "run-2",
        [latent_row(hashes[i], buckets[i]) for i in ("owl.png", "fox.png", "elk.png")]
        + [latent_row(sha("tiny.png"), (64, 48), status="too_small")],
    )
    write_shard(latents, "run-killed", [latent_row(sha("ghost.png"), (64, 48))])
    index = pa.Table.from_pylist(
        [
            {
                "image_id": image_id,
                "content_hash": hashes[image_id],
                "captions": captions,
                "bucket_width": bucket[0],
                "bucket_height": bucket[1],
                "original_width": original[0],
                "original_height": original[1],
                "crop_left": crop[0],
                "crop_top": crop[1],
            }
            for image_id, bucket, original, crop, captions in IMAGES
        ]
    )
    manifest.index = latents.write_index(index)
    latents.commit(manifest, [first, second], 5)

    text = CacheStore(str(tmp_path / "text"), "text_embeds")
    text_manifest = text.open({"family": "test"}, override=False)
    captions = sorted({c for *_, caps in IMAGES for c in caps} | {""})
    rows = []
    for caption in captions:
        row = {"caption": caption, "caption_hash": sha(caption)}
        for key, array in embeds_of(caption).items():
            row |= {
                key: array.tobytes(),
                f"{key}_shape": list(array.shape),
                f"{key}_dtype": "float32",
            }
        rows.append(row)
    text.commit(text_manifest, [write_shard(text, "run-1", rows)], len(rows))
    return {"vae": str(tmp_path / "vae"), "text": str(tmp_path / "text"), "hashes": hashes}


def test_load_dataset_samples(caches: dict, tmp_path: Path) -> None:
    fields = {"id": "pets", "repeats": 2, "probability": 0.5, "is_regularization_data": True}
    loaded = load_dataset_samples(caches["vae"], fields)
    assert (loaded.dataset_id, loaded.repeats, loaded.probability) == ("pets", 2, 0.5)
    assert loaded.is_regularisation
    by_hash = {s.content_hash: s for s in loaded.samples}
    cat = by_hash[caches["hashes"]["cat.png"]]
    assert cat == Sample(
        "pets", sha("cat.png"), (64, 48), ("a cat", "a grey cat"), (100, 75), (2, 0)
    )
    assert Counter(s.bucket for s in loaded.samples) == {(64, 48): 3, (48, 64): 2}
    defaults = load_dataset_samples(caches["vae"], {"id": "pets"})
    assert (defaults.repeats, defaults.probability, defaults.is_regularisation) == (0, 1.0, False)
    with pytest.raises(FileNotFoundError, match="no latent cache index"):
        load_dataset_samples(str(tmp_path / "nowhere"), {"id": "x"})


def test_latent_store_reads_only_the_rows_asked_for(caches: dict) -> None:
    hashes = caches["hashes"]
    store = LatentStore(caches["vae"])
    got = store.load([hashes["dog.png"], hashes["fox.png"], hashes["dog.png"]])
    assert store.rows_read == 2 and set(got) == {hashes["dog.png"], hashes["fox.png"]}
    expected = latent_of(hashes["fox.png"], (48, 64))
    assert got[hashes["fox.png"]].dtype == torch.float16
    assert torch.equal(got[hashes["fox.png"]], torch.from_numpy(expected))
    assert tuple(got[hashes["dog.png"]].shape) == (4, 6, 8)
    store.load([hashes["dog.png"]])
    assert store.rows_read == 3 and len(store) == 0  # no row cache unless asked for
    # Rows of uncommitted shards and rows without a latent are not in the cache.
    for missing in (sha("ghost.png"), sha("tiny.png")):
        with pytest.raises(KeyError, match="rerun the caching stage"):
            store.load([missing])
    small = LatentStore(caches["vae"], max_cached=1)
    small.load([hashes["cat.png"], hashes["owl.png"]])
    assert len(small) == 1
    small.load([hashes["owl.png"]])
    assert small.rows_read == 2  # the most recent one stayed


def test_text_embed_store(caches: dict) -> None:
    store = TextEmbedStore(caches["text"])
    got = store.load_captions(["a dog", ""])
    assert set(got) == {sha("a dog"), sha("")} and store.rows_read == 2
    for key, array in embeds_of("a dog").items():
        assert torch.equal(got[sha("a dog")][key], torch.from_numpy(array))
    assert set(got[sha("")]) == {"prompt_embeds", "pooled_prompt_embeds"}


def feed(caches: dict, p0: float, seed: int = 0):
    data = load_dataset_samples(caches["vae"], {"id": "pets"})
    p = plan_epoch([data], epoch=0, seed=3, batch_size=2, world_size=1)
    batch = next(b for b in p.batches(0) if b[0].bucket == (64, 48))
    latents = LatentStore(caches["vae"]).load(s.content_hash for s in batch)
    texts = TextEmbedStore(caches["text"])
    embeds = texts.load_captions(batch_captions(batch))
    empty = texts.load_captions([""])[sha("")]
    out = collate(
        batch,
        latents,
        embeds,
        caption_dropout_probability=p0,
        generator=torch.Generator().manual_seed(seed),
        empty_caption_embeds=empty,
    )
    return batch, out


def test_collate_end_to_end(caches: dict) -> None:
    batch, out = feed(caches, 0.0)
    images = {sha(image_id): row for image_id, *row in IMAGES}
    assert out["latents"].shape == (2, 4, 6, 8) and out["dataset_id"] == "pets"
    for i, sample in enumerate(batch):
        bucket, original, crop, captions = images[sample.content_hash]
        assert torch.equal(
            out["latents"][i], torch.from_numpy(latent_of(sample.content_hash, bucket))
        )
        assert out["original_size"][i].tolist() == [original[1], original[0]]
        assert out["crop_top_left"][i].tolist() == [crop[1], crop[0]]
        assert out["target_size"][i].tolist() == [48, 64]
        assert out["captions"][i] in captions
        expected = embeds_of(out["captions"][i])
        for key in ("prompt_embeds", "pooled_prompt_embeds"):
            assert torch.equal(out["text_embeds"][key][i], torch.from_numpy(expected[key]))
    assert out["text_embeds"]["prompt_embeds"].shape == (2, 3, 8)
    assert not out["caption_dropped"].any()

    _, dropped = feed(caches, 1.0)
    assert dropped["caption_dropped"].all() and dropped["captions"] == ["", ""]
    empty = embeds_of("")["pooled_prompt_embeds"]
    assert torch.equal(dropped["text_embeds"]["pooled_prompt_embeds"][1], torch.from_numpy(empty))


def test_collate_randomness(caches: dict) -> None:
    # Dropout: the first len(batch) uniforms of the generator, below the probability.
    for seed in range(5):
        _, out = feed(caches, 0.5, seed)
        draws = torch.rand(2, generator=torch.Generator().manual_seed(seed))
        assert out["caption_dropped"].tolist() == (draws < 0.5).tolist()
    # A two-line caption: each line half of the time.
    cat = Sample("pets", "h", (64, 48), ("a cat", "a grey cat"))
    embeds = {
        sha(c): {k: torch.from_numpy(v) for k, v in embeds_of(c).items()} for c in cat.captions
    }
    generator = torch.Generator().manual_seed(0)
    picks = Counter(
        collate(
            [cat],
            {"h": torch.zeros(4, 6, 8)},
            embeds,
            caption_dropout_probability=0.0,
            generator=generator,
        )["captions"][0]
        for _ in range(400)
    )
    assert picks["a grey cat"] / 400 == pytest.approx(0.5, abs=0.1)
    assert set(picks) == {"a cat", "a grey cat"}


def test_collate_refuses_mixed_batches() -> None:
    a = Sample("d", "a", (64, 48), ("x",))
    b = Sample("d", "b", (48, 64), ("x",))
    latents = {"a": torch.zeros(4, 6, 8), "b": torch.zeros(4, 8, 6)}
    with pytest.raises(ValueError, match="one bucket"):
        collate([a, b], latents, {}, caption_dropout_probability=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="empty caption"):
        collate([a], latents, {}, caption_dropout_probability=0.1, generator=torch.Generator())


def test_stores_read_s3_caches(caches: dict, s3_server) -> None:
    bucket = s3_server.create_bucket()
    s3_server.upload_folder(caches["vae"], bucket, "cache/vae")
    s3_server.upload_folder(caches["text"], bucket, "cache/text")
    s3 = s3_server.settings()
    loaded = load_dataset_samples(f"s3://{bucket}/cache/vae", {"id": "pets"}, s3)
    assert len(loaded.samples) == 5
    fox = caches["hashes"]["fox.png"]
    latents = LatentStore(f"s3://{bucket}/cache/vae", s3).load([fox])
    assert torch.equal(latents[fox], torch.from_numpy(latent_of(fox, (48, 64))))
    embeds = TextEmbedStore(f"s3://{bucket}/cache/text", s3).load_captions(["a fox"])
    expected = embeds_of("a fox")["prompt_embeds"]
    assert torch.equal(embeds[sha("a fox")]["prompt_embeds"], torch.from_numpy(expected))

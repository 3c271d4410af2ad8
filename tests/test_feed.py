"""The training feed and the cache's row index: read-ahead that serves exactly the plan's
batches, reads of just the rows' bytes, old caches and bad index files, missing shards.
Caches are written in the real layout by the feed benchmark's writer (no Ray)."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from st_ray.bench.feed_caches import write_caches
from st_ray.data import cache_index
from st_ray.data.cache_index import ShardReadError
from st_ray.data.cache_store import CacheStore
from st_ray.data.pipeline import LATENTS
from st_ray.train import data_feed, epoch_plan
from st_ray.train.feed import Feed, rank_planner

ROWS, CAPTIONS, SHARD = 40, 10, 16


@pytest.fixture
def caches(tmp_path: Path, request) -> dict:
    return write_caches(
        str(tmp_path / "cache"),
        ROWS,
        captions=CAPTIONS,
        latent_side=2,
        text_scale=256,
        rows_per_shard=SHARD,
        compression=getattr(request, "param", "none"),
    )


def stores(caches: dict, s3=None) -> tuple[data_feed.LatentStore, data_feed.TextEmbedStore]:
    return data_feed.LatentStore(caches["vae"], s3), data_feed.TextEmbedStore(caches["text"], s3)


def shard_values(root: str, key: str, column: str) -> dict[str, bytes]:
    """What the shards hold, read whole with pyarrow (the reference)."""
    store = CacheStore(root, LATENTS if key == "content_hash" else "text_embeds")
    values = {}
    for shard in store.read_manifest().shards:
        for row in pq.read_table(f"{store.path}/{shard}", columns=[key, column]).to_pylist():
            values[row[key]] = row[column]
    return values


def plan_batches(caches: dict, epoch: int = 0) -> list[list[data_feed.Sample]]:
    data = data_feed.load_dataset_samples(caches["vae"], {"id": "bench"})
    return epoch_plan.plan_epoch([data], epoch=epoch, seed=5, batch_size=3, world_size=1).batches(0)


# zstd: compress_disk_cache (the default); snappy: Ray Data's default (text caches).
@pytest.mark.parametrize("caches", ["none", "zstd", "snappy"], indirect=True)
def test_commit_writes_the_row_index_and_reads_fetch_only_the_rows(caches: dict) -> None:
    vae = CacheStore(caches["vae"], LATENTS)
    manifest = vae.read_manifest()
    assert len(manifest.shards) == 3
    # One index file, for exactly the committed shards.
    assert [p.name for p in Path(caches["vae"]).glob("rows-*")] == [
        cache_index.index_name(manifest.shards)
    ]
    latents, texts = stores(caches)
    expected = shard_values(caches["vae"], "content_hash", "latent")
    keys = sorted(expected)[::3]
    got = latents.load(keys)
    for key in keys:
        assert got[key].dtype == torch.float16 and tuple(got[key].shape) == (4, 2, 2)
        assert got[key].numpy().tobytes() == expected[key]
    # One ranged read per row: no row group read, and for uncompressed shards exactly the
    # 32 bytes of each latent plus the 4-byte length Parquet stores before it.
    assert latents.rows.group_reads == 0 and latents.rows.rows_read == len(keys)
    if latents.rows.index.codec["latent"][0] == 0:
        assert latents.rows.bytes_read == len(keys) * (32 + 4)
    embeds = texts.load_captions(["caption 3", ""])
    reference = shard_values(caches["text"], "caption_hash", "prompt_embeds")
    assert (
        embeds[data_feed.caption_hash("caption 3")]["prompt_embeds"].numpy().tobytes()
        == (reference[data_feed.caption_hash("caption 3")])
    )
    assert set(embeds[data_feed.caption_hash("")]) == {"prompt_embeds", "pooled_prompt_embeds"}


def test_cache_without_row_index_gets_one_built_from_its_shards(caches: dict) -> None:
    # Caches written before row indexes: no rows-* file, several rows per row group.
    vae = CacheStore(caches["vae"], LATENTS)
    manifest = vae.read_manifest()
    for shard in manifest.shards:
        path = Path(vae.path) / shard
        pq.write_table(pq.read_table(path), path, row_group_size=4)
    for index in Path(caches["vae"]).glob("rows-*"):
        index.unlink()
    latents, _ = stores(caches)
    expected = shard_values(caches["vae"], "content_hash", "latent")
    got = latents.load(sorted(expected))
    assert all(got[k].numpy().tobytes() == v for k, v in expected.items())
    assert latents.rows.group_reads == ROWS  # no byte ranges in that layout
    assert (Path(caches["vae"]) / cache_index.index_name(manifest.shards)).is_file()


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop_row"])
def test_bad_row_index_is_detected_and_rebuilt(caches: dict, damage: str, caplog) -> None:
    vae = CacheStore(caches["vae"], LATENTS)
    shards = vae.read_manifest().shards
    path = Path(caches["vae"]) / cache_index.index_name(shards)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        table = pq.read_table(path)
        keys = table.column("key").to_pylist()
        keys[0], keys[1] = keys[1], keys[0]  # still valid Parquet, wrong content
        damaged = table.set_column(0, "key", [keys])
        pq.write_table(damaged, path)
    else:
        pq.write_table(pq.read_table(path).slice(1), path)  # metadata kept, one row fewer
    with caplog.at_level(logging.WARNING, logger="st_ray.data.cache_index"):
        latents, _ = stores(caches)
    assert "rebuilding it from the shards" in caplog.text
    expected = shard_values(caches["vae"], "content_hash", "latent")
    got = latents.load(sorted(expected))
    assert all(got[k].numpy().tobytes() == v for k, v in expected.items())
    cache_index.decode(path.read_bytes(), shards)  # written back whole


def test_feed_serves_the_plan_in_order_across_epochs_within_budget(caches: dict) -> None:
    latents, texts = stores(caches)
    planner = rank_planner(
        [data_feed.load_dataset_samples(caches["vae"], {"id": "bench"})],
        {"train_batch_size": 3},
        seed=5,
        world_size=1,
        rank=0,
    )
    first = planner(0)
    batch_bytes = latents.rows.nbytes(s.content_hash for s in first[0]) + texts.rows.nbytes(
        data_feed.caption_hash(c) for c in data_feed.batch_captions(first[0])
    )
    feed = Feed({"bench": latents}, texts, budget_bytes=3 * batch_bytes, depth=8, planner=planner)
    direct_latents, direct_texts = stores(caches)
    try:
        for epoch in range(2):
            batches = planner(epoch)
            assert batches == plan_batches(caches, epoch)
            feed.expect(epoch, batches)
            for batch in batches:
                got_latents, got_texts = feed.rows(batch)
                want = direct_latents.load(s.content_hash for s in batch)
                assert set(got_latents) == set(want)
                assert all(torch.equal(got_latents[k], want[k]) for k in want)
                captions = data_feed.batch_captions(batch)
                assert set(got_texts) == {data_feed.caption_hash(c) for c in captions}
        # Every batch came from the read-ahead, epoch 1's too (read before the loop got there).
        assert feed.batches_ahead == 2 * len(first) and feed.batches_direct == 0
        assert 0 < feed.peak_queued_bytes <= 3 * batch_bytes
    finally:
        feed.close()


def test_feed_leaves_collate_draws_and_resume_unchanged(caches: dict) -> None:
    batches = plan_batches(caches)
    latents, texts = stores(caches)
    empty = texts.load_captions([""])[data_feed.caption_hash("")]

    def run(start: int, feed: Feed | None) -> list[dict]:
        generator = torch.Generator().manual_seed(11)
        if feed is not None:
            feed.expect(0, batches[start:])
        out = []
        for batch in batches[start:]:
            if feed is None:
                rows = (
                    latents.load(s.content_hash for s in batch),
                    texts.load_captions(data_feed.batch_captions(batch)),
                )
            else:
                rows = feed.rows(batch)
            out.append(
                data_feed.collate(
                    batch,
                    *rows,
                    caption_dropout_probability=0.5,
                    generator=generator,
                    empty_caption_embeds=empty,
                )
            )
        return out

    for start in (0, 5):  # 5: a run resumed within the epoch
        feed = Feed({"bench": latents}, texts, depth=4)
        try:
            with_feed, without = run(start, feed), run(start, None)
            assert feed.batches_ahead == len(batches) - start
        finally:
            feed.close()
        for a, b in zip(with_feed, without, strict=True):
            assert a["captions"] == b["captions"]
            assert torch.equal(a["caption_dropped"], b["caption_dropped"])
            assert torch.equal(a["latents"], b["latents"])
            assert torch.equal(a["text_embeds"]["prompt_embeds"], b["text_embeds"]["prompt_embeds"])


def test_shard_lost_mid_epoch_stops_the_feed_naming_it(caches: dict) -> None:
    batches = plan_batches(caches)
    latents, texts = stores(caches)
    shards = CacheStore(caches["vae"], LATENTS).read_manifest().shards
    feed = Feed({"bench": latents}, texts, depth=2)
    feed.expect(0, batches)
    try:
        for batch in batches[:2]:
            feed.rows(batch)
        # Truncate every latent shard: open handles see it too (a deleted file would not).
        for shard in shards:
            path = Path(caches["vae"]) / shard
            path.write_bytes(path.read_bytes()[:100])
        with pytest.raises(ShardReadError, match=r"shard shards/.*\.parquet is missing or unread"):
            for batch in batches[2:]:
                feed.rows(batch)
    finally:
        feed.close()


def test_missing_shard_is_an_error_naming_it(caches: dict) -> None:
    vae = CacheStore(caches["vae"], LATENTS)
    shard = vae.read_manifest().shards[1]
    keys = sorted(shard_values(caches["vae"], "content_hash", "latent"))
    (Path(vae.path) / shard).unlink()
    latents, _ = stores(caches)  # the index is still valid: nothing read from that shard yet
    with pytest.raises(ShardReadError, match=shard):
        latents.load(keys)
    # Rebuilding the index of a cache with a shard gone fails the same way.
    for index in Path(caches["vae"]).glob("rows-*"):
        index.unlink()
    with pytest.raises(ShardReadError, match=shard):
        stores(caches)


def test_s3_cache_is_read_by_byte_ranges(tmp_path: Path, s3_server) -> None:
    s3 = s3_server.settings()
    root = f"s3://{s3_server.create_bucket()}/cache"
    caches = write_caches(
        root,
        12,
        captions=4,
        latent_side=2,
        text_scale=256,
        s3=s3,
        rows_per_shard=5,
        compression="none",
    )
    latents, texts = stores(caches, s3)
    keys = latents.rows.index.key_list()
    got = latents.load(keys)
    assert len(got) == 12 and latents.rows.bytes_read == 12 * (32 + 4)
    embeds = texts.load_captions(["caption 1"])
    assert embeds[data_feed.caption_hash("caption 1")]["prompt_embeds"].shape == (77, 8)


def test_feed_options_size_the_read_ahead(caches: dict) -> None:
    latents, texts = stores(caches)
    feed = Feed.from_options(
        {"bench": latents}, texts, {"feed_prefetch_mib": 3, "dataloader_prefetch_qlen": 2}
    )
    try:
        assert (feed.budget_bytes, feed.depth) == (3 * 1024 * 1024, 2)
        feed.expect(0, plan_batches(caches))
        assert len(feed._ahead) == 2  # depth bounds the batches read ahead
    finally:
        feed.close()
    defaults = Feed.from_options({"bench": latents}, texts, {})
    assert (defaults.budget_bytes, defaults.depth) == (256 * 1024 * 1024, 10)
    defaults.close()

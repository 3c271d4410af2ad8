"""The cache folder's bookkeeping without Ray: settings fingerprints, commits, leftovers of
interrupted runs, and vae_cache_scan_behaviour."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from st_ray.data.cache_store import CacheMismatch, CacheStore
from st_ray.data.pipeline import cached_hashes
from st_ray.models.family import get_family


def _shard(store: CacheStore, rows: list[dict]) -> str:
    _, relative = store.new_run_dir()
    path = Path(store.path) / relative / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return f"{relative}/part-0.parquet"


ROWS = [
    # a 64x48 bucket has 8x6 latents: consistent
    {
        "content_hash": "a" * 64,
        "status": "ok",
        "latent_shape": [4, 6, 8],
        "bucket_width": 64,
        "bucket_height": 48,
    },
    # a latent that does not match its bucket (e.g. written by a broken earlier version)
    {
        "content_hash": "b" * 64,
        "status": "ok",
        "latent_shape": [4, 8, 8],
        "bucket_width": 64,
        "bucket_height": 48,
    },
    {
        "content_hash": "c" * 64,
        "status": "truncated",
        "latent_shape": None,
        "bucket_width": None,
        "bucket_height": None,
    },
]


def test_scan_behaviour_recreate_and_sync(tmp_path: Path) -> None:
    store = CacheStore(str(tmp_path), "latents")
    manifest = store.open({"resolution": 64}, override=False)
    store.commit(manifest, [_shard(store, ROWS)], 2)
    manifest = store.open({"resolution": 64}, override=False)
    sd = get_family("sd1x")
    assert cached_hashes(store, manifest, "recreate", sd) == {"a" * 64}
    assert cached_hashes(store, manifest, "sync", sd) == {"a" * 64, "b" * 64}


@pytest.mark.parametrize(
    "family,shape",
    [("sd1x", [4, 16, 16]), ("sana", [32, 4, 4]), ("deepfloyd", [3, 128, 128])],
)
def test_reuse_follows_the_family_latent_geometry(tmp_path: Path, family: str, shape) -> None:
    """A 128x128 bucket's latent in each family's geometry (8x VAE, 32x DC-AE, pixels) is
    reused by that family under 'recreate'; any other family's geometry is not."""
    store = CacheStore(str(tmp_path), "latents")
    manifest = store.open({"resolution": 128}, override=False)
    row = {"status": "ok", "latent_shape": shape, "bucket_width": 128, "bucket_height": 128}
    store.commit(manifest, [_shard(store, [{"content_hash": "a" * 64, **row}])], 1)
    manifest = store.open({"resolution": 128}, override=False)
    for other in ("sd1x", "sana", "deepfloyd"):
        reused = cached_hashes(store, manifest, "recreate", get_family(other))
        assert reused == ({"a" * 64} if other == family else set()), other


def test_settings_change_and_override(tmp_path: Path) -> None:
    store = CacheStore(str(tmp_path), "latents")
    manifest = store.open({"resolution": 64, "crop": False}, override=False)
    store.commit(manifest, [_shard(store, ROWS)], 2)
    with pytest.raises(CacheMismatch, match=r"crop: False -> True"):
        store.open({"resolution": 64, "crop": True}, override=False)
    fresh = store.open({"resolution": 64, "crop": True}, override=True)
    assert fresh.shards == [] and not (tmp_path / "shards").exists()


def test_uncommitted_shards_and_kind_mixups(tmp_path: Path) -> None:
    store = CacheStore(str(tmp_path), "latents")
    manifest = store.open({}, override=False)
    committed = _shard(store, ROWS)
    store.commit(manifest, [committed], 2)
    stray = _shard(store, ROWS)  # never committed: an interrupted run
    again = store.open({}, override=False)
    assert again.shards == [committed]
    assert not (tmp_path / stray).exists() and (tmp_path / committed).exists()
    with pytest.raises(CacheMismatch, match="holds a 'latents' cache"):
        CacheStore(str(tmp_path), "text_embeds").open({}, override=False)

"""Synthetic caches for the feed benchmark (``st_ray.bench.feed``) in st_ray's real layout:
``CacheStore`` shards with ``cache_index.SHARD_WRITE_ARGS`` row groups, the dataset index,
commit (which writes the row index) -- no VAE: 1024-px latents (4x128x128 fp16, 128 KiB) and
dual-encoder text embeddings (77x2048 + 1280 fp16)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from st_ray.data.cache_index import SHARD_WRITE_ARGS
from st_ray.data.cache_store import CacheStore
from st_ray.data.pipeline import LATENTS, TEXT, caption_hash
from st_ray.storage import S3Settings

SDXL_TEXT = {"prompt_embeds": (77, 2048), "pooled_prompt_embeds": (1280,)}


def _content_hash(i: int) -> str:
    return hashlib.sha256(f"image-{i}".encode()).hexdigest()


def _payload(base: np.ndarray, i: int) -> bytes:
    """A distinct row: a shared random block with the row number in its first bytes."""
    row = base.copy()
    row.reshape(-1).view(np.uint8)[:8] = np.frombuffer(int(i).to_bytes(8, "little"), np.uint8)
    return row.tobytes()


# Ray Data's writes before row indexes: 4-row row groups (vae_batch_size blocks),
# dictionary encoding on.
OLD_WRITE_ARGS = {"row_group_size": 4}


def _write_shard(
    store: CacheStore, run_dir: str, part: int, table: pa.Table, old: bool, compression: str
) -> str:
    relative = f"{run_dir}/part-{part:05d}.parquet"
    pq.write_table(
        table,
        f"{store.path}/{relative}",
        filesystem=store.pyarrow_filesystem(),
        compression=compression,
        **(OLD_WRITE_ARGS if old else SHARD_WRITE_ARGS),
    )
    return relative


def _run_dir(store: CacheStore) -> str:
    full, relative = store.new_run_dir()
    store.pyarrow_filesystem().create_dir(full)
    return relative


def write_caches(
    root: str,
    rows: int,
    *,
    captions: int,
    latent_side: int = 128,
    text_scale: int = 1,
    rows_per_shard: int = 1000,
    s3: S3Settings | None = None,
    old_layout: bool = False,
    compression: str = "zstd",
) -> dict[str, Any]:
    """A latent cache (``root``/vae) of ``rows`` images in one 8*side px bucket and a text
    cache (``root``/text) of ``captions`` distinct captions (image i uses caption i mod
    captions). Returns the cache roots and per-row payload sizes."""
    rng = np.random.default_rng(0)
    shape = (4, latent_side, latent_side)
    base = rng.standard_normal(shape).astype(np.float16)
    side = latent_side * 8
    vae = CacheStore(f"{root}/vae", LATENTS, s3)
    manifest = vae.open({"bench": "feed", "side": side}, override=True)
    run_dir = _run_dir(vae)
    shards = []
    for part, start in enumerate(range(0, rows, rows_per_shard)):
        ids = range(start, min(rows, start + rows_per_shard))
        table = pa.table(
            {
                "dataset_id": ["bench"] * len(ids),
                "image_id": [f"{i:07d}.jpg" for i in ids],
                "status": ["ok"] * len(ids),
                "content_hash": [_content_hash(i) for i in ids],
                "original_width": pa.array([side] * len(ids), pa.int32()),
                "original_height": pa.array([side] * len(ids), pa.int32()),
                "bucket_width": pa.array([side] * len(ids), pa.int32()),
                "bucket_height": pa.array([side] * len(ids), pa.int32()),
                "crop_left": pa.array([0] * len(ids), pa.int32()),
                "crop_top": pa.array([0] * len(ids), pa.int32()),
                "captions": [[f"caption {i % captions}"] for i in ids],
                "latent": pa.array([_payload(base, i) for i in ids], pa.binary()),
                "latent_shape": pa.array([list(shape)] * len(ids), pa.list_(pa.int32())),
                "latent_dtype": ["float16"] * len(ids),
            }
        )
        shards.append(_write_shard(vae, run_dir, part, table, old_layout, compression))
    manifest.index = vae.write_index(
        pa.table(
            {
                "image_id": [f"{i:07d}.jpg" for i in range(rows)],
                "content_hash": [_content_hash(i) for i in range(rows)],
                "captions": [[f"caption {i % captions}"] for i in range(rows)],
                **{
                    name: pa.array([value] * rows, pa.int32())
                    for name, value in (
                        ("bucket_width", side),
                        ("bucket_height", side),
                        ("original_width", side),
                        ("original_height", side),
                        ("crop_left", 0),
                        ("crop_top", 0),
                    )
                },
            }
        )
    )
    vae.commit(manifest, shards, rows)

    text = CacheStore(f"{root}/text", TEXT, s3)
    text_manifest = text.open({"bench": "feed"}, override=True)
    text_dir = _run_dir(text)
    dims = {
        k: (v[0], v[1] // text_scale) if len(v) == 2 else (v[0] // text_scale,)
        for k, v in SDXL_TEXT.items()
    }
    bases = {k: rng.standard_normal(v).astype(np.float16) for k, v in dims.items()}
    names = ["", *(f"caption {i}" for i in range(captions))]
    text_shards = []
    for part, start in enumerate(range(0, len(names), rows_per_shard)):
        chunk = names[start : start + rows_per_shard]
        columns: dict[str, Any] = {
            "caption": chunk,
            "caption_hash": [caption_hash(c) for c in chunk],
        }
        for key, array in bases.items():
            columns[key] = pa.array(
                [_payload(array, start + j) for j in range(len(chunk))], pa.binary()
            )
            columns[f"{key}_shape"] = [list(array.shape)] * len(chunk)
            columns[f"{key}_dtype"] = ["float16"] * len(chunk)
        text_shards.append(
            _write_shard(text, text_dir, part, pa.table(columns), old_layout, compression)
        )
    text.commit(text_manifest, text_shards, len(names))
    text_row = sum(int(np.prod(v)) * 2 for v in dims.values())
    return {
        "vae": f"{root}/vae",
        "text": f"{root}/text",
        "latent_bytes": int(np.prod(shape)) * 2,
        "text_bytes": text_row,
    }

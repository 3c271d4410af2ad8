"""Benchmark of the training feed (``st_ray.train.feed``) on synthetic caches.

For each size (and storage: local disk, the in-process S3 test server) it writes a latent
cache and a text-embedding cache in st_ray's real layout -- ``CacheStore`` shards with
``cache_index.SHARD_WRITE_ARGS`` row groups, the dataset index, commit (which writes the row
index) -- no VAE: 1024-px latents (4x128x128 fp16, 128 KiB) and dual-encoder text embeddings
(77x2048 + 1280 fp16). It then consumes the cache in a fresh process, like a Train worker,
with the real feed and a simulated step (a sleep, default 300 ms), and reports:

* data wait (time in ``rows`` + ``collate``) as a fraction of the step: median and p99;
* bytes read from storage / payload bytes the batches use (each row and caption counted
  every time a batch uses it, as training does);
* the consumer's peak RSS.

``--old`` also measures the reader this feed replaced (a filtered ``pq.read_table`` per
shard per batch, synchronous, every row kept in memory), for before/after figures.

On S3 the moto server holds every object in this process's memory, so S3 runs keep the row
counts and shrink each row (``--s3-latent-side``, ``--s3-text-scale``); the report says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from st_ray.bench.workdir import run_and_report
from st_ray.data.cache_index import SHARD_WRITE_ARGS
from st_ray.data.cache_store import CacheStore
from st_ray.data.pipeline import LATENTS, TEXT, caption_hash
from st_ray.storage import S3Settings

MIB = 1024 * 1024
SDXL_TEXT = {"prompt_embeds": (77, 2048), "pooled_prompt_embeds": (1280,)}


# --- synthetic caches in the real layout ----------------------------------------------------


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


# --- consuming (in a fresh process) ---------------------------------------------------------


class OldReader:
    """The reader the feed replaced, for before/after figures: key -> shard from the key
    columns, then per batch a filtered ``pq.read_table`` per shard touched; rows kept in
    memory without bound."""

    def __init__(self, root: str, kind: str, key: str, s3: S3Settings | None) -> None:
        self.store = CacheStore(root, kind, s3)
        manifest = self.store.read_manifest()
        self.fs = self.store.pyarrow_filesystem()
        self.key = key
        self.where: dict[str, str] = {}
        for shard in manifest.shards:
            table = pq.read_table(
                f"{self.store.path}/{shard}", filesystem=self.fs, columns=[key], partitioning=None
            )
            for k in table.column(key).to_pylist():
                self.where[k] = shard
        self.cache: dict[str, dict[str, Any]] = {}

    def load(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        from st_ray.data.cache_rows import tensor

        missing = [k for k in dict.fromkeys(keys) if k not in self.cache]
        by_shard: dict[str, list[str]] = {}
        for k in missing:
            by_shard.setdefault(self.where[k], []).append(k)
        for shard, shard_keys in by_shard.items():
            table = pq.read_table(
                f"{self.store.path}/{shard}",
                filesystem=self.fs,
                filters=[(self.key, "in", shard_keys)],
                partitioning=None,
            )
            for row in table.to_pylist():
                names = [n for n in row if f"{n}_shape" in row and f"{n}_dtype" in row]
                self.cache[row[self.key]] = {
                    n: tensor(row[n], row[f"{n}_shape"], row[f"{n}_dtype"]) for n in names
                }
        return {k: self.cache[k] for k in keys}


def _rchar() -> int:
    """Bytes this process read through read()/pread() (local storage)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: the latter keeps the forking
    parent's peak across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def consume(config: dict[str, Any]) -> dict[str, Any]:
    """Train-like consumption of a cache: the feed (or the old reader), a sleeping step."""
    import torch

    from st_ray.train import data_feed
    from st_ray.train.feed import Feed

    # The simulated step computes nothing; on a busy machine, OpenMP wake-ups of collate's
    # small copies would otherwise dominate what is measured (see --torch-threads).
    torch.set_num_threads(config["torch_threads"])
    s3 = S3Settings(**config["s3"]) if config.get("s3") else None
    step_s = config["step_ms"] / 1000
    started = time.perf_counter()
    data = data_feed.load_dataset_samples(config["vae"], {"id": "bench"}, s3)
    plan = data_feed.plan_epoch(
        [data], epoch=0, seed=1, batch_size=config["batch_size"], world_size=1
    )
    batches = plan.batches(0)
    steps = min(config["steps"], len(batches))
    generator = torch.Generator().manual_seed(0)
    old = config["reader"] == "old"
    if old:
        latents = OldReader(config["vae"], LATENTS, "content_hash", s3)
        texts = OldReader(config["text"], TEXT, "caption_hash", s3)
    else:
        latent_store = data_feed.LatentStore(config["vae"], s3)
        text_store = data_feed.TextEmbedStore(config["text"], s3)
        feed = Feed(
            {"bench": latent_store},
            text_store,
            budget_bytes=config["prefetch_mib"] * MIB,
            depth=config["depth"],
        )
        feed.expect(0, batches)
    setup_s = time.perf_counter() - started
    rchar = _rchar()
    waits, used = [], 0
    for batch in batches[:steps]:
        wait = time.perf_counter()
        if old:
            lat = {k: v["latent"] for k, v in latents.load([s.content_hash for s in batch]).items()}
            emb = texts.load([caption_hash(c) for c in data_feed.batch_captions(batch)])
        else:
            lat, emb = feed.rows(batch)
        data_feed.collate(batch, lat, emb, caption_dropout_probability=0.0, generator=generator)
        waits.append(time.perf_counter() - wait)
        used += sum(t.numel() * t.element_size() for t in lat.values())
        used += sum(t.numel() * t.element_size() for row in emb.values() for t in row.values())
        time.sleep(step_s)
    result: dict[str, Any] = {"setup_s": setup_s, "steps": steps, "used_bytes": used}
    if not old:
        feed.settle()  # reads ahead finished: compare all bytes read with all fetched
        result["read_bytes"] = feed.bytes_read
        result["fetched_bytes"] = feed.fetched_bytes
        result["peak_queued_mib"] = feed.peak_queued_bytes / MIB
        feed.close()
    result["rchar_bytes"] = _rchar() - rchar
    measured = sorted(waits[config["warmup"] :] or waits)
    result["wait_median_ms"] = statistics.median(measured) * 1000
    result["wait_p99_ms"] = measured[min(len(measured) - 1, int(0.99 * len(measured)))] * 1000
    result["wait_fraction_median"] = result["wait_median_ms"] / config["step_ms"]
    result["wait_fraction_p99"] = result["wait_p99_ms"] / config["step_ms"]
    result["peak_rss_mib"] = _peak_rss_mib()
    return result


def _consume_in_child(config: dict[str, Any], env: dict[str, str] | None = None) -> dict:
    child = subprocess.run(
        [sys.executable, "-m", "st_ray.bench.feed", json.dumps(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if child.returncode != 0:
        raise RuntimeError(f"feed consumer failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


# --- the benchmark --------------------------------------------------------------------------


def _cases(args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    for rows in args.rows if args.local else []:
        yield "local", rows
    for rows in args.s3_rows if args.s3 else []:
        yield "s3", rows


def run_benchmark(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from st_ray.bench.s3_local import local_s3

    results: list[dict[str, Any]] = []
    base = {
        "steps": args.steps,
        "warmup": args.warmup,
        "step_ms": args.step_ms,
        "batch_size": args.batch_size,
        "prefetch_mib": args.prefetch_mib,
        "depth": args.depth,
        "torch_threads": args.torch_threads,
    }
    with local_s3() if args.s3 else _nothing() as server:
        for storage, rows in _cases(args):
            readers = ["new"]
            if args.old and rows <= args.old_max_rows:
                readers.append("old")
            for reader in readers:
                results.append(_case(workdir, args, base, server, storage, rows, reader))
    return {"step_ms": args.step_ms, "batch_size": args.batch_size, "results": results}


def _case(
    workdir: Path,
    args: argparse.Namespace,
    base: dict[str, Any],
    server: Any,
    storage: str,
    rows: int,
    reader: str,
) -> dict[str, Any]:
    """Build a cache (the old reader gets the layout it was made for) and consume it."""
    import shutil

    s3 = server.settings() if storage == "s3" else None
    root = (
        f"s3://{server.create_bucket()}/cache"
        if storage == "s3"
        else str(workdir / f"local-{rows}-{reader}")
    )
    built = time.perf_counter()
    caches = write_caches(
        root,
        rows,
        captions=min(rows, args.captions),
        latent_side=args.s3_latent_side if storage == "s3" else 128,
        text_scale=args.s3_text_scale if storage == "s3" else 1,
        rows_per_shard=args.rows_per_shard,
        s3=s3,
        old_layout=reader == "old",
        compression=args.compression,
    )
    build_s = time.perf_counter() - built
    s3_fields = None
    if s3 is not None:
        s3_fields = {
            "endpoint_url": s3.endpoint_url,
            "region": s3.region,
            "key": s3.key,
            "secret": s3.secret,
        }
    config = {**base, **caches, "s3": s3_fields, "reader": reader}
    if reader == "old":
        config["steps"] = min(args.steps, args.old_steps)
    before = (server.bytes_sent, server.gets) if s3 is not None else (0, 0)
    try:
        measured = _consume_in_child(config)
    finally:
        if s3 is None and not args.keep_caches:
            shutil.rmtree(root, ignore_errors=True)
    if s3 is not None:
        # Server-side count: includes the consumer's setup (manifest, indexes).
        measured["served_bytes"] = server.bytes_sent - before[0]
        measured["gets"] = server.gets - before[1]
    # Bytes read: the feed's own count; the old reader's from the server (S3) or the
    # process's read() bytes (local; page-cache hits included, setup excluded).
    read = measured.get("read_bytes")
    if read is None:
        read = measured.get("served_bytes") if s3 is not None else measured["rchar_bytes"]
    used = measured.get("fetched_bytes") or measured["used_bytes"]
    return {
        "storage": storage,
        "rows": rows,
        "reader": reader,
        "latent_kib": caches["latent_bytes"] / 1024,
        "text_kib": caches["text_bytes"] / 1024,
        "build_s": build_s,
        "read_over_used": read / max(used, 1),
        **measured,
    }


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def format_report(result: dict[str, Any]) -> str:
    header = (
        f"feed benchmark: simulated step {result['step_ms']} ms, batch {result['batch_size']}\n"
        "storage  rows     reader  row KiB (latent+text)  wait/step median  p99     "
        "read/used  peak RSS MiB  steps"
    )
    lines = [header]
    for r in result["results"]:
        lines.append(
            f"{r['storage']:<8} {r['rows']:<8} {r['reader']:<7} "
            f"{r['latent_kib']:>6.1f}+{r['text_kib']:<8.1f}        "
            f"{r['wait_fraction_median']:>8.2%}        {r['wait_fraction_p99']:>7.2%}  "
            f"{r['read_over_used']:>8.2f}  {r['peak_rss_mib']:>11.0f}  {r['steps']:>5}"
        )
    by = {(r["storage"], r["reader"], r["rows"]): r for r in result["results"]}
    ratios = []
    for storage, reader in sorted({(s, rd) for s, rd, _ in by}):
        sizes = sorted(rows for s, rd, rows in by if (s, rd) == (storage, reader))
        for small, large in zip(sizes, sizes[1:], strict=False):
            a, b = by[(storage, reader, small)], by[(storage, reader, large)]
            ratios.append(
                f"ratio peak RSS {large}/{small} rows ({storage}, {reader}): "
                f"{b['peak_rss_mib'] / a['peak_rss_mib']:.2f}"
            )
    lines += ratios
    if any(r["storage"] == "s3" for r in result["results"]):
        lines.append(
            "note: S3 runs use the in-process moto server (objects in RAM): same row counts, "
            "smaller rows (see row KiB)"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    return run_and_report(
        args, "st_ray-bench-feed-", lambda w: run_benchmark(w, args), format_report
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[1000, 10000, 100000],
        help="local cache sizes (100k 1024-px rows: 12.8 GB of latents on disk)",
    )
    parser.add_argument(
        "--s3-rows",
        type=int,
        nargs="+",
        default=[1000, 10000, 100000],
        help="S3 cache sizes (moto server in RAM: rows shrunk, see --s3-latent-side)",
    )
    parser.add_argument("--no-local", dest="local", action="store_false", help="skip local")
    parser.add_argument("--no-s3", dest="s3", action="store_false", help="skip S3")
    parser.add_argument("--steps", type=int, default=200, help="steps consumed per case")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out")
    parser.add_argument("--step-ms", type=float, default=300.0, help="simulated step length")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--captions",
        type=int,
        default=1000,
        help="distinct captions (text cache rows), at most the row count",
    )
    parser.add_argument("--rows-per-shard", type=int, default=1000)
    parser.add_argument("--prefetch-mib", type=int, default=256, help="feed_prefetch_mib")
    parser.add_argument("--depth", type=int, default=10, help="dataloader_prefetch_qlen")
    parser.add_argument(
        "--s3-latent-side", type=int, default=32, help="latent edge on S3 (4xNxN fp16; 32: 8 KiB)"
    )
    parser.add_argument(
        "--s3-text-scale", type=int, default=16, help="text embedding widths divided by this on S3"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch threads of the consumer (collate)"
    )
    parser.add_argument(
        "--old", action="store_true", help="also measure the reader the feed replaced"
    )
    parser.add_argument(
        "--compression",
        default="zstd",
        help="shard codec: zstd as compress_disk_cache (the default) writes, or none",
    )
    parser.add_argument(
        "--old-max-rows", type=int, default=10000, help="largest size the old reader runs at"
    )
    parser.add_argument("--old-steps", type=int, default=40, help="steps of the old reader")
    parser.add_argument("--keep-caches", action="store_true", help="keep local caches")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp folder")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--json", type=Path, default=None, help="also save the figures here")


if __name__ == "__main__":  # the consumer process
    print(json.dumps(consume(json.loads(sys.argv[1]))))

"""The feed benchmark's consumer (``st_ray.bench.feed``): a fresh process that reads a cache
like a Train worker, with the real feed (or the reader it replaced) and a simulated step, and
prints its figures as one JSON line."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from st_ray.data.cache_store import CacheStore
from st_ray.data.pipeline import LATENTS, TEXT, caption_hash
from st_ray.storage import S3Settings

MIB = 1024 * 1024


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

    from st_ray.train import data_feed, epoch_plan
    from st_ray.train.feed import Feed

    # The simulated step computes nothing; on a busy machine, OpenMP wake-ups of collate's
    # small copies would otherwise dominate what is measured (see --torch-threads).
    torch.set_num_threads(config["torch_threads"])
    s3 = S3Settings(**config["s3"]) if config.get("s3") else None
    step_s = config["step_ms"] / 1000
    started = time.perf_counter()
    data = data_feed.load_dataset_samples(config["vae"], {"id": "bench"}, s3)
    plan = epoch_plan.plan_epoch(
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


def consume_in_child(config: dict[str, Any], env: dict[str, str] | None = None) -> dict:
    child = subprocess.run(
        [sys.executable, "-m", "st_ray.bench.feed_consumer", json.dumps(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if child.returncode != 0:
        raise RuntimeError(f"feed consumer failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # the consumer process
    print(json.dumps(consume(json.loads(sys.argv[1]))))

"""Benchmark of the training feed (``st_ray.train.feed``) on synthetic caches.

For each size (and storage: local disk, the in-process S3 test server) it writes a latent
cache and a text-embedding cache in st_ray's real layout (``st_ray.bench.feed_caches``). It
then consumes the cache in a fresh process, like a Train worker, with the real feed and a
simulated step (a sleep, default 300 ms; ``st_ray.bench.feed_consumer``), and reports:

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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from st_ray.bench.feed_caches import write_caches
from st_ray.bench.feed_consumer import consume_in_child
from st_ray.bench.workdir import run_and_report

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
        measured = consume_in_child(config)
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

"""CLI: ``python -m st_ray.bench cache [--images N] [--family F] [--resolution PX] ...`` and
``python -m st_ray.bench train [--steps N] [--warmup N] [--batch-size B] [--resolution PX] ...``
(in-process and under Ray Train)
and ``python -m st_ray.bench sizing [--resolution PX ...] [--mfu F]``
and ``python -m st_ray.bench feed [--rows N ...] [--s3-rows N ...] [--step-ms MS] [--old]``
and ``python -m st_ray.bench tread [--family F] [--resolution PX] [--routes JSON] ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from st_ray.zoo import DEMO_FAMILY, FAMILIES, SIZING_FAMILY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m st_ray.bench", description=__doc__)
    # One subcommand per benchmarked stage.
    sub = parser.add_subparsers(dest="command", required=True)
    cache = sub.add_parser(
        "cache",
        help="latent/text caching: Ray Data pipeline vs a sequential loop, warm vs cold, memory",
    )
    cache.add_argument("--images", type=int, default=64, help="N; memory is also measured at 4N")
    cache.add_argument(
        "--family", default=DEMO_FAMILY, choices=FAMILIES, help="tiny zoo model family"
    )
    cache.add_argument("--resolution", type=int, default=128, help="pixel_area edge in pixels")
    cache.add_argument("--cpus", type=int, default=None, help="num_cpus for the local Ray instance")
    cache.add_argument(
        "--warmup", type=int, default=4, help="images of the untimed warm-up run (0: none)"
    )
    cache.add_argument(
        "--sequential-threads", type=int, default=1, help="torch threads of the sequential loop"
    )
    cache.add_argument(
        "--warm-cold-only",
        action="store_true",
        help="only a cold then a warm run of N images (no sequential loop, no 4N run)",
    )
    cache.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp folder")
    cache.add_argument("--keep", action="store_true", help="keep the temp folder")
    cache.add_argument("--json", type=Path, default=None, help="also save the figures here")
    train = sub.add_parser(
        "train",
        help="training loop: steady-state step time vs a bare PyTorch loop, time to first "
        "step, data-wait fraction",
    )
    train.add_argument("--steps", type=int, default=30, help="optimizer steps of each loop")
    train.add_argument("--warmup", type=int, default=5, help="first steps left out of the medians")
    train.add_argument("--batch-size", type=int, default=2, help="train_batch_size")
    train.add_argument("--resolution", type=int, default=64, help="pixel_area edge in pixels")
    train.add_argument(
        "--family", default=DEMO_FAMILY, choices=FAMILIES, help="tiny zoo model family"
    )
    train.add_argument(
        "--images", type=int, default=None, help="default: steps x batch size (one epoch)"
    )
    train.add_argument(
        "--threads", type=int, default=None, help="torch threads of both loops (default: torch's)"
    )
    train.add_argument(
        "--no-ray-train",
        action="store_true",
        help="skip the real path (TorchTrainer, 1 worker, default options, vs a bare loop with "
        "the worker's threads)",
    )
    train.add_argument(
        "--ray-repeats",
        type=int,
        default=3,
        help="interleaved repeats of the real path (Ray Train run, bare loop alone); medians",
    )
    train.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp folder")
    train.add_argument("--keep", action="store_true", help="keep the temp folder")
    train.add_argument("--json", type=Path, default=None, help="also save the figures here")
    sizing = sub.add_parser(
        "sizing",
        help=f"{SIZING_FAMILY} caching vs training FLOPs (meta device) and per-GPU estimates "
        "from published peaks",
    )
    sizing.add_argument("--resolution", type=int, nargs="+", default=[1024], help="square edge")
    sizing.add_argument("--mfu", type=float, default=0.35, help="assumed fraction of peak")
    feed = sub.add_parser(
        "feed",
        help="training feed on synthetic 1024-px caches (local and S3): data wait per step, "
        "bytes read / used, worker peak RSS at each size",
    )
    from st_ray.bench.feed import add_arguments as feed_arguments

    feed_arguments(feed)
    tread = sub.add_parser(
        "tread", help="TREAD token routing: training step time with and without tread_config"
    )
    from st_ray.bench.tread import add_arguments as tread_arguments

    tread_arguments(tread)
    args = parser.parse_args(argv)

    if args.command == "cache":
        from st_ray.bench import cache as bench_cache

        return bench_cache.main(args)
    if args.command == "train":
        from st_ray.bench import train as bench_train

        return bench_train.main(args)
    if args.command == "feed":
        from st_ray.bench import feed as bench_feed

        return bench_feed.main(args)
    if args.command == "tread":
        from st_ray.bench import tread as bench_tread

        return bench_tread.main(args)
    if args.command == "sizing":
        from st_ray.bench import sizing as bench_sizing

        return bench_sizing.main(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())

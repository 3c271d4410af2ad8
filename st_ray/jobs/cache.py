"""``jobs/cache.py``: build or refresh the latent and text-embedding caches of a run."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from st_ray.config.cli import job_parser, print_help, split_args
from st_ray.config.errors import ConfigError
from st_ray.plan import Plan, build_plan

DESCRIPTION = """Cache VAE latents and text embeddings for the datasets of a SimpleTuner config,
with Ray Data (CPU tasks decode and crop, actor pools encode; GPUs when the cluster has them).
Re-runs only encode what is new; jobs/train.py runs the same step on demand."""

EXIT_INVALID_CONFIG = 2
EXIT_STALE_CACHE = 4


def main(argv: Sequence[str]) -> int:
    parser = job_parser("jobs/cache.py", DESCRIPTION)
    args, overrides = split_args(parser, argv)
    if args.help:
        print_help(parser)
        return 0
    if not args.config:
        print("jobs/cache.py: --config is required; see --help", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    try:
        plan = build_plan(args.config, overrides)
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return EXIT_INVALID_CONFIG
    return run_cache(plan)


def run_cache(plan: Plan) -> int:
    """Connect to Ray, build the caches, print the summary. Shared with jobs/train.py."""
    from st_ray.cluster import connect
    from st_ray.data.cache_store import CacheMismatch
    from st_ray.data.pipeline import build_caches

    try:
        connect(plan.options)
    except ConfigError as err:  # a named Ray address that does not answer
        print(err.render(), file=sys.stderr)
        return EXIT_INVALID_CONFIG
    try:
        report = build_caches(plan)
    except CacheMismatch as err:
        print(f"cache: {err}", file=sys.stderr)
        return EXIT_STALE_CACHE
    print("\ncache summary")
    print(report.table())
    return 0

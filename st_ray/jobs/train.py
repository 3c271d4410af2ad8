"""``jobs/train.py``: validate a SimpleTuner config, then run the pipeline stages st_ray has."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from st_ray.config.cli import job_parser, print_help, split_args
from st_ray.config.errors import ConfigError
from st_ray.config.redact import redact
from st_ray.plan import Plan, build_plan, format_plan
from st_ray.train.run_identity import RunTarget, resolve

DESCRIPTION = """Train a LoRA or full fine-tune of a diffusion model on Ray.

Reads SimpleTuner's config.json (or config.toml) with config.env beside it and the
multidatabackend.json it names. Any option below can be overridden on the command line.
Precedence: defaults < config file < config.env < command line."""

EXIT_INVALID_CONFIG = 2


def main(argv: Sequence[str]) -> int:
    parser = job_parser("jobs/train.py", DESCRIPTION)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate files, datasets and options, print the plan; start no Ray work",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="build and run the built-in example (tiny model, generated images)",
    )
    parser.add_argument(
        "--demo-dir", default=".st_ray/demo", help="where --demo builds its model, data and outputs"
    )
    args, overrides = split_args(parser, argv)
    if args.help:
        print_help(parser)
        return 0
    if args.demo:
        from st_ray import demo

        config: str | Path = demo.prepare(args.demo_dir)
    elif args.config:
        config = args.config
    else:
        print("jobs/train.py: --config is required (or --demo); see --help", file=sys.stderr)
        return EXIT_INVALID_CONFIG

    try:
        plan = build_plan(config, overrides)
        target = choose_run(plan)  # reads run storage: refuses a changed config
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return EXIT_INVALID_CONFIG
    print(format_plan(plan))
    if args.dry_run:
        print("\ndry run: the configuration is valid; nothing was started.")
        return 0
    return run(plan, target)


def choose_run(plan: Plan) -> RunTarget:
    """The Ray Train run this job trains (a fresh folder, or the checkpoint it continues);
    what it found goes into the plan's notes."""
    target = resolve(plan)
    plan.notes.extend(target.notes)
    return target


def run(plan: Plan, target: RunTarget | None = None) -> int:
    """Record the resolved config, bring the caches up to date (only what is missing is
    encoded), then train on Ray Train workers and say where everything went."""
    from st_ray.jobs.cache import run_cache
    from st_ray.train.trainer import fit

    target = target or choose_run(plan)
    if target.finished:
        print(f"\n{target.finished_message()}")
        return 0
    saved = save_resolved_config(plan)
    print(f"\nresolved config (secrets redacted): {saved}")
    status = run_cache(plan)
    if status != 0:
        return status
    try:
        result = fit(plan, name=target.name)
    except ConfigError as err:  # the cluster cannot hold the run (num_machines)
        print(err.render(), file=sys.stderr)
        return EXIT_INVALID_CONFIG
    print("\ntraining finished")
    print(f"  final weights   {result.output_dir}")
    print(f"  checkpoints     {redact(result.checkpoint or 'none')}")
    print(f"  images          {result.output_dir / 'validation'}")
    print(f"  model card      {result.output_dir / 'README.md'}")
    print(f"  MLflow          {redact(plan.tracking_uri)}")
    if result.metrics:
        print(
            f"  last loss       {result.metrics.get('loss', float('nan')):.4f} at step "
            f"{result.metrics.get('step')}"
        )
    return 0


def save_resolved_config(plan: Plan) -> Path:
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    path = plan.output_dir / "st_ray_resolved_config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(plan.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path

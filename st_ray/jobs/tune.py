"""``jobs/tune.py``: a hyperparameter campaign over a SimpleTuner config (Ray Tune)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from st_ray.config.cli import job_parser, print_help, split_args
from st_ray.config.errors import ConfigError
from st_ray.plan import Plan, build_plan, format_plan
from st_ray.tune.sweep import Sweep, SweepError, load_sweep

DESCRIPTION = """Run a hyperparameter campaign: every trial is a Ray Train run of the config with
the trial's values from the sweep file (search space, search, early stopping, resources and
storage; see the README). The caches are built once, before any trial. --resume continues an
interrupted campaign without rerunning finished trials."""

EXIT_INVALID = 2
EXIT_INTERRUPTED = 3


def main(argv: Sequence[str]) -> int:
    parser = job_parser("jobs/tune.py", DESCRIPTION)
    parser.add_argument("--sweep", help="the sweep file (JSON)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the campaign the sweep file names"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate the config and the sweep; start nothing"
    )
    args, overrides = split_args(parser, argv)
    if args.help:
        print_help(parser)
        return 0
    if not args.config or not args.sweep:
        print("jobs/tune.py: --config and --sweep are required; see --help", file=sys.stderr)
        return EXIT_INVALID
    try:
        plan, sweep = prepare(args.config, args.sweep, overrides)
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return EXIT_INVALID
    except SweepError as err:
        print(err.render(), file=sys.stderr)
        return EXIT_INVALID
    print(format_plan(plan))
    print(format_sweep(sweep))
    if args.dry_run:
        print("\ndry run: the configuration and the sweep are valid; nothing was started.")
        return 0
    return run(plan, sweep, resume=args.resume)


def prepare(
    config: str | Path, sweep_path: str | Path, overrides: Sequence[str]
) -> tuple[Plan, Sweep]:
    """The run plan and the checked sweep: every value a trial can take is validated with the
    run config's own checks (options, choices, rules between options)."""
    from st_ray.tune.campaign import check

    plan = build_plan(config, overrides)

    def check_value(option: str, value: Any) -> list[str]:
        try:
            build_plan(config, [*overrides, f"--{option}={_cli(value)}"])
        except ConfigError as err:
            return [p.message if p.key == option else str(p) for p in err.problems]
        return []

    sweep = load_sweep(sweep_path, check_value)
    check(plan, sweep)
    return plan, sweep


def run(plan: Plan, sweep: Sweep, *, resume: bool = False) -> int:
    from st_ray.jobs.cache import run_cache
    from st_ray.tune import campaign, results

    status = run_cache(plan)  # the one cache every trial reads
    if status != 0:
        return status
    outcome = campaign.run(plan, sweep, resume=resume)
    folder = campaign.Campaign(plan, sweep).local_dir
    rows = outcome.rows
    print(f"\ncampaign '{sweep.name}': {len(rows)} trials, ranked by {sweep.metric} ({sweep.mode})")
    print(results.format_table(rows, sweep.metric))
    if not outcome.complete:
        print("\nthe campaign was interrupted; continue it with the same command and --resume")
        return EXIT_INTERRUPTED
    print(f"\n  table        {folder / results.TABLE_CSV} (and {results.TABLE_JSON})")
    print(f"  plot         {folder / results.PLOT}")
    print(f"  best weights {folder / results.BEST}")
    return 0


def format_sweep(sweep: Sweep) -> str:
    lines = [
        f"campaign '{sweep.name}': {sweep.search} search, {sweep.num_samples} sample(s), "
        f"scheduler {sweep.scheduler}, {sweep.metric} ({sweep.mode}), "
        f"{sweep.max_concurrent_trials} concurrent, {sweep.workers} worker(s) per trial",
    ]
    lines += [f"    {d.option}: {d.kind} {list(d.values)}" for d in sweep.dimensions]
    return "\n".join(lines)


def _cli(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        import json

        return json.dumps(value)
    return str(value)

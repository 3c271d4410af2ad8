"""Benchmark of TREAD token routing: st_ray's training loop (in process, 1 worker, what
``fit_in_process`` runs) on a tiny zoo DiT, with and without ``tread_config``.

Synthetic square images of one size (one latent shape for every step), caches built once;
then ``rounds`` pairs of runs, each pair one plain run and one routed run of ``steps`` steps,
alternated so both see the same machine load. Figures: the median ``step_time_s`` of each
kind over the steps after ``warmup`` of every round, and the routed run's saving. The step
time is the loop's own (data loading + forward/backward + optimizer step).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from st_ray import zoo
from st_ray.bench.inputs import fresh, generate_images, ray_session, write_config
from st_ray.bench.train import run_loop
from st_ray.bench.workdir import run_and_report
from st_ray.models.family import FAMILIES
from st_ray.plan import build_plan

ROUTABLE = tuple(name for name in zoo.FAMILIES if FAMILIES[name].token_routing is not None)
DEFAULT_ROUTE = {"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": -2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", default=ROUTABLE[0], choices=ROUTABLE, help="tiny zoo DiT")
    parser.add_argument("--resolution", type=int, default=256, help="square edge in pixels")
    parser.add_argument("--batch-size", type=int, default=2, help="train_batch_size")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of each run")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out per run")
    parser.add_argument("--rounds", type=int, default=2, help="plain/routed run pairs")
    parser.add_argument(
        "--routes",
        default=json.dumps({"routes": [DEFAULT_ROUTE]}),
        help="tread_config of the routed runs (default: half the image tokens skip every "
        "block but the last)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp folder")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--json", type=Path, default=None, help="also save the figures here")


def run_benchmark(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    if args.steps < args.warmup + 2:
        raise ValueError("--steps must exceed --warmup by at least 2")
    images = args.steps * args.batch_size
    model = zoo.ensure(args.family, workdir / "models")
    data = fresh(workdir / "data")
    generate_images(data, images, sides=(args.resolution, args.resolution))
    config = write_config(fresh(workdir / "run"), model, data, args.family, args.resolution)
    common = ["--train_batch_size", str(args.batch_size), "--max_train_steps", str(args.steps)]
    with ray_session(None):
        from st_ray.data.pipeline import build_caches

        build_caches(build_plan(config, common, {}))
    times: dict[str, list[float]] = {"plain": [], "tread": []}
    for round_ in range(args.rounds):
        for kind, extra in (("plain", []), ("tread", ["--tread_config", args.routes])):
            out = ["--output_dir", str(workdir / f"out-{kind}-{round_}")]
            plan = build_plan(config, [*common, *out, *extra], {})
            with (workdir / f"{kind}-{round_}-stdout.txt").open("w") as stdout:
                loop = run_loop(plan, stdout=stdout)
            times[kind] += [float(r["step_time_s"]) for r in loop.reported[args.warmup :]]
    plain, routed = statistics.median(times["plain"]), statistics.median(times["tread"])
    return {
        "family": args.family,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "tread_config": json.loads(args.routes),
        "plain_step_time_median_s": plain,
        "tread_step_time_median_s": routed,
        "saving_fraction": 1 - routed / plain,
        "plain_step_times_s": times["plain"],
        "tread_step_times_s": times["tread"],
    }


def format_report(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"TREAD on tiny {r['family']} at {r['resolution']} px, batch {r['batch_size']}, "
            f"routes {json.dumps(r['tread_config'])}",
            f"  step time median, plain:  {r['plain_step_time_median_s'] * 1000:.1f} ms",
            f"  step time median, routed: {r['tread_step_time_median_s'] * 1000:.1f} ms",
            f"  saving: {r['saving_fraction'] * 100:.1f} %",
        ]
    )


def main(args: argparse.Namespace) -> int:
    return run_and_report(
        args, "st-ray-bench-tread-", lambda w: run_benchmark(w, args), format_report
    )

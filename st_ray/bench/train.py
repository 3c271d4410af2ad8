"""Benchmark of the training loop (``st_ray.train.worker.train``) against a bare PyTorch loop.

One run, one tiny zoo model, one batch size and resolution, synthetic square images (so every
batch has the same latent shape):

1. steady-state step time: st_ray's loop with 1 worker in this process (what
   ``st_ray.train.trainer.fit_in_process`` runs), median over the steps after ``warmup``,
   against a bare loop doing the same math on random in-memory tensors already on the device:
   the same denoiser (``load_denoiser`` with the run's options, gradient checkpointing
   included), the same LoRA (``adapters.add_lora``), the same optimizer (``build_optimizer``),
   noise + the family's ``predict`` + MSE + backward + optimizer step. The bare loop has no data
   loading, checkpointing, LR scheduler, gradient-norm/clipping or tracking.
2. time to first step: from calling the loop to the moment the first step's metrics reach the
   report callback (model loading, LoRA, optimizer, cache index reads, the MLflow run, imports
   not already done, and the first step itself).
3. data-wait fraction: sum(data_wait_s) / sum(step_time_s) over the steady-state steps.

``fit_in_process`` keeps its report callback to itself, so the benchmark builds the same
``WorkerContext`` (rank 0, world size 1, ``pick_device()``, no resume) with its own callback
and runs the same ``train`` function. Two st_ray step times come out: the loop's own
``step_time_s`` (data loading + forward/backward + clipping + optimizer and scheduler step),
and the interval between two reports (that plus the per-step MLflow call and progress line,
and an epoch's planning where one starts). The last step's interval is left out: that step
saves a checkpoint before it reports (the loop always checkpoints its final step;
checkpoint_step_interval is unset, so no other step does), and the final export runs after it,
outside every step.

The two loops are interleaved: the callback runs one bare step after each st_ray step, outside
the loop's own timings, and the time it spends is taken out of the report intervals. Both loops
so see the same machine load, which on a shared machine changes from second to second; run one
after the other, their medians compare two different moments. The bare model is built in the
first callback, after the time to first step is taken.

4. the real path: ``st_ray.train.trainer.fit`` on the same plan (what ``jobs/train.py`` runs
   once the caches are up to date), a ``TorchTrainer`` with 1 worker and the default options
   (``cpus_per_worker: auto``), on the running Ray instance or a local one. Its per-step
   ``step_time_s`` and the intervals between consecutive steps' MLflow timestamps (taken when
   each step's metrics are queued: everything a step costs, bookkeeping included) are read
   back from the run's MLflow store. Then the bare loop runs in a Ray Train worker of the same
   size, then alone in this process with as many torch threads as the worker had
   (st_ray.bench.train_ray): the first ratio is what Ray itself costs, the second what st_ray
   adds under Ray Train. They cannot be interleaved step by step (the workers are other
   processes), so whole runs alternate: ``ray_repeats`` times (Ray Train run, bare loop in a
   Train worker, bare loop alone with Ray stopped); each figure is the median over the
   repeats, the ratios come with their range. The CPU seconds of every Ray process over the
   steady-state steps (st_ray.bench.process_cpu) say what competes with torch's threads.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from st_ray import zoo
from st_ray.bench.bare import BareLoop, cached_shapes, run_bare
from st_ray.bench.inputs import fresh, generate_images, ray_session, write_config
from st_ray.bench.train_ray import (
    combine_repeats,
    ray_train_figures,
    ray_train_lines,
    run_ray_bare,
    run_ray_train,
)
from st_ray.bench.workdir import run_and_report
from st_ray.plan import Plan, build_plan


@dataclass
class LoopRun:
    """st_ray's loop, timed from outside through its report callback."""

    time_to_first_step_s: float  # call -> first report
    wall_s: float  # call -> return, less the time spent in ``between``
    tail_s: float  # last report -> return (final export, model card, tracker finish)
    intervals_s: list[float]  # report k-1 -> report k for k = 2..N, ``between`` left out
    reported: list[dict[str, Any]]  # the loop's metrics, one dict per step


def run_loop(
    plan: Plan, between: Callable[[], None] | None = None, stdout: TextIO | None = None
) -> LoopRun:
    """``fit_in_process(plan, ...)`` with a timing report callback (see the module docstring),
    which calls ``between`` after recording each report. The loop's own printing goes to
    ``stdout`` (None: this process's)."""
    from st_ray.device import pick_device
    from st_ray.train.worker import WorkerContext, train

    entered: list[float] = []
    left: list[float] = []
    reported: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        entered.append(time.perf_counter())
        reported.append(dict(metrics))  # the checkpoint directory is not kept: nothing resumes
        if between is not None:
            between()
        left.append(time.perf_counter())

    ctx = WorkerContext(rank=0, world_size=1, device=pick_device(), report=report, resume_dir=None)
    with contextlib.redirect_stdout(stdout) if stdout else contextlib.nullcontext():
        start = time.perf_counter()
        train(plan, ctx)
        end = time.perf_counter()
    if not entered:
        raise RuntimeError("the training loop reported no step")
    return LoopRun(
        time_to_first_step_s=entered[0] - start,
        wall_s=end - start - sum(b - a for a, b in zip(entered, left, strict=True)),
        tail_s=end - left[-1],
        intervals_s=[b - a for a, b in zip(left, entered[1:], strict=False)],
        reported=reported,
    )


def run_benchmark(
    workdir: Path,
    *,
    steps: int = 30,
    warmup: int = 5,
    batch_size: int = 2,
    resolution: int = 64,
    family: str = zoo.DEMO_FAMILY,
    images: int | None = None,
    threads: int | None = None,
    zoo_root: Path | None = None,
    ray_train: bool = True,
    ray_repeats: int = 3,
) -> dict[str, Any]:
    """Run every measurement; the returned figures are plain JSON values. The caches are built
    with the running Ray instance if there is one, else a local one started (and stopped)
    here; the in-process loop runs without Ray. ``threads``: torch threads of both in-process
    loops (None: torch's default). ``ray_train``: also measure the real path (4. above),
    ``ray_repeats`` times, interleaved with the bare loop alone."""
    if warmup < 0 or steps < warmup + 2:
        raise ValueError("--steps must exceed --warmup by at least 2 (and --warmup >= 0)")
    if batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if ray_repeats < 1:
        raise ValueError("--ray-repeats must be at least 1")
    # One epoch by default, so every step reads its samples from the cache shards.
    images = images or steps * batch_size
    model = zoo.ensure(family, zoo_root or workdir / "models")
    data = fresh(workdir / "data")
    # Square images of exactly the target area: one bucket, one latent shape for every step.
    generate_images(data, images, sides=(resolution, resolution))
    config = write_config(fresh(workdir / "run"), model, data, family, resolution)
    overrides = ["--train_batch_size", str(batch_size), "--max_train_steps", str(steps)]
    plan = build_plan(config, overrides, {})
    if plan.options.get("checkpoint_step_interval") or plan.options.get(
        "checkpoint_epoch_interval"
    ):
        raise RuntimeError("checkpoints must be off for the benchmark")

    with ray_session(None):
        from st_ray.data.pipeline import build_caches

        report = build_caches(plan)
    (dataset,) = report.datasets
    if dataset.encoded != images or dataset.skipped:
        raise RuntimeError(f"expected {images} images encoded, got {dataset}")
    shapes = cached_shapes(plan)

    import torch

    from st_ray.device import pick_device

    bare: list[BareLoop] = []
    bare_times: list[float] = []

    def bare_step() -> None:
        if not bare:
            bare.append(BareLoop(plan, shapes))
        bare_times.append(bare[0].step())

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        used_threads = torch.get_num_threads()
        load_before = os.getloadavg()[0]
        with (workdir / "loop-stdout.txt").open("w") as stdout:
            loop = run_loop(plan, between=bare_step, stdout=stdout)
        load_after = os.getloadavg()[0]
    finally:
        torch.set_num_threads(previous)
    if len(loop.reported) != steps or len(bare_times) != steps:
        raise RuntimeError(
            f"{len(loop.reported)} st_ray and {len(bare_times)} bare steps, expected {steps}"
        )

    real: dict[str, Any] = {}
    if ray_train:
        # A/B/A/B: each repeat runs st_ray under Ray Train (then the bare loop in a Train
        # worker) on a fresh local Ray instance, then the bare loop alone with Ray stopped.
        repeats = []
        for r in range(ray_repeats):
            out = workdir / f"ray-out-{r}"
            real_plan = build_plan(config, [*overrides, "--output_dir", str(out)], {})
            with ray_session(None), (workdir / f"ray-train-stdout-{r}.txt").open("w") as stdout:
                ray_run = run_ray_train(real_plan, stdout)
                bare_in_ray = run_ray_bare(plan, shapes, steps, workdir / f"ray-bare-{r}")
            bare_alone = run_bare(plan, shapes, steps, ray_run.torch_threads)
            repeats.append(ray_train_figures(ray_run, bare_alone, bare_in_ray, warmup))
        real = combine_repeats(repeats)

    steady = loop.reported[warmup:]
    step_times = [float(r["step_time_s"]) for r in steady]
    data_wait = [float(r["data_wait_s"]) for r in steady]
    # intervals_s[k-2] ends at step k's report; the final step's (it checkpoints first)
    # is left out.
    intervals = loop.intervals_s[max(warmup - 1, 0) : -1]
    bare_steady = bare_times[warmup:]
    st_median = statistics.median(step_times)
    interval_median = statistics.median(intervals)
    bare_median = statistics.median(bare_steady)
    return {
        "family": family,
        "resolution": resolution,
        "batch_size": batch_size,
        "images": images,
        "steps": steps,
        "warmup": warmup,
        "device": str(pick_device()),
        "torch_threads": used_threads,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "latent_shape": list(shapes.latent),
        "text_shapes": {k: list(shape) for k, (shape, _) in shapes.text.items()},
        "st_ray_step_time_median_s": st_median,
        "st_ray_step_interval_median_s": interval_median,
        "bare_step_time_median_s": bare_median,
        "st_ray_step_time_min_s": min(step_times),
        "bare_step_time_min_s": min(bare_steady),
        "ratio_st_ray_vs_bare": st_median / bare_median,
        "ratio_st_ray_interval_vs_bare": interval_median / bare_median,
        "ratio_st_ray_vs_bare_min": min(step_times) / min(bare_steady),
        "time_to_first_step_s": loop.time_to_first_step_s,
        "first_step_time_s": float(loop.reported[0]["step_time_s"]),
        "st_ray_wall_s": loop.wall_s,
        "st_ray_tail_s": loop.tail_s,
        "data_wait_fraction": sum(data_wait) / sum(step_times),
        # Robust to the few steps a busy machine stretches, which dominate the sums.
        "data_wait_fraction_median": statistics.median(
            w / t for w, t in zip(data_wait, step_times, strict=True)
        ),
        "data_wait_median_s": statistics.median(data_wait),
        "st_ray_step_times_s": [float(r["step_time_s"]) for r in loop.reported],
        "st_ray_data_wait_s": [float(r["data_wait_s"]) for r in loop.reported],
        "st_ray_intervals_s": loop.intervals_s,
        "bare_step_times_s": bare_times,
        **real,
    }


def format_report(r: dict[str, Any]) -> str:
    first, last = r["warmup"] + 1, r["steps"]
    setup = (
        f"{r['family']} tiny model + LoRA, batch {r['batch_size']} at {r['resolution']}px "
        f"(latents {tuple(r['latent_shape'])}), {r['images']} images, {r['device']}, "
        f"torch threads {r['torch_threads']} of {r['cpu_count']} CPUs"
    )
    rows = [
        ("setup", setup),
        (
            "st_ray step_time_s",
            f"{_ms(r['st_ray_step_time_median_s'])} median, "
            f"{_ms(r['st_ray_step_time_min_s'])} min (steps {first}-{last})",
        ),
        (
            "st_ray report interval",
            f"{_ms(r['st_ray_step_interval_median_s'])} median (steps {first}-{last - 1})",
        ),
        (
            "bare PyTorch step",
            f"{_ms(r['bare_step_time_median_s'])} median, "
            f"{_ms(r['bare_step_time_min_s'])} min (steps {first}-{last})",
        ),
        (
            "time to first step",
            f"{r['time_to_first_step_s']:.2f} s (the first step itself: "
            f"{r['first_step_time_s']:.2f} s)",
        ),
        (
            "st_ray loop wall time",
            f"{r['st_ray_wall_s']:.2f} s, bare steps not counted (after the last report: "
            f"{r['st_ray_tail_s']:.2f} s)",
        ),
        ("data wait per step", f"{_ms(r['data_wait_median_s'], 2)} median (steps {first}-{last})"),
        (
            "load average (1 min)",
            f"{r['load_average_before']:.2f} before, {r['load_average_after']:.2f} after",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(
        [
            *(f"{name.ljust(width)}  {value}" for name, value in rows),
            "",
            f"timed:  steady state = steps {first}-{last} of {last} ({r['warmup']} warm-up steps"
            " left out).",
            "        st_ray = worker.train() in this process with fit_in_process's context",
            "        (world size 1) and a report callback that timestamps each call.",
            "        step_time_s = the loop's own figure: data loading, forward/backward, grad",
            "        norm/clip, optimizer + LR scheduler step. report interval = time between",
            "        two reports: that plus the per-step MLflow call and progress line; the last",
            "        step's is left out (the loop saves its final checkpoint before reporting).",
            "        bare = the same denoiser, LoRA and optimizer on random tensors already on",
            "        the device: noise + predict + MSE + backward + step + zero_grad; no data,",
            "        checkpoints, scheduler, clipping or tracking. Interleaved: one bare step",
            "        inside each st_ray report callback (not counted in st_ray's figures), so",
            "        both loops run under the same machine load.",
            "        time to first step = from calling the loop to its first report: denoiser",
            "        load, LoRA, optimizer, cache index, MLflow run, lazy imports, step 1.",
            "",
            f"ratio st_ray/bare step time (median): {r['ratio_st_ray_vs_bare']:.2f}x",
            "ratio st_ray/bare step time, report interval (median): "
            f"{r['ratio_st_ray_interval_vs_bare']:.2f}x",
            f"ratio st_ray/bare step time (min): {r['ratio_st_ray_vs_bare_min']:.2f}x",
            f"data-wait fraction (sum data_wait_s / sum step_time_s, steady state): "
            f"{r['data_wait_fraction']:.3f}",
            "data-wait fraction (median of per-step data_wait_s / step_time_s): "
            f"{r['data_wait_fraction_median']:.3f}",
            *(ray_train_lines(r) if "ray_train_step_time_median_s" in r else []),
        ]
    )


def _ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1000:.{digits}f} ms"


def main(args: argparse.Namespace) -> int:
    return run_and_report(
        args,
        "st_ray-bench-train-",
        lambda workdir: run_benchmark(
            workdir,
            steps=args.steps,
            warmup=args.warmup,
            batch_size=args.batch_size,
            resolution=args.resolution,
            family=args.family,
            images=args.images,
            threads=args.threads,
            ray_train=not args.no_ray_train,
            ray_repeats=args.ray_repeats,
        ),
        format_report,
    )

"""The per-worker training function: one Ray Train worker's diffusion loop.

``train_worker(config)`` runs under Ray Train (``TorchTrainer``: one worker per GPU, DDP) or
in-process without Ray (world size 1) — the same code either way. Reading order: ``train``
(the loop, here) -> ``build.build_run`` (what the loop needs) -> ``step.train_step`` (one
optimizer step) -> ``events.Events`` (metrics, checkpoints, validation, the final export) ->
``saving`` (checkpoint, resume, export through the run's ``trainable.Trainable``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from st_ray.device import use_worker_cpus
from st_ray.plan import Plan
from st_ray.train import data_feed
from st_ray.train.build import Run, build_run, plan_for
from st_ray.train.checkpoints import Progress
from st_ray.train.context import (
    StopRequested,
    WorkerContext,
    explicit_checkpoint,
    ray_context,
)
from st_ray.train.events import Events
from st_ray.train.saving import final_output_dir, prefer_rolling, restore
from st_ray.train.settings import LoopSettings
from st_ray.train.step import train_step

__all__ = ["WorkerContext", "final_output_dir", "train", "train_worker"]


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``train_loop_per_worker``); ``config["plan"]`` is the run plan,
    ``config["stop_check"]`` (optional) builds the early-stop question asked after each step
    (a Tune trial passes one; it is built here, on the worker, where Ray's context is).

    Ray Train hands back the run's latest checkpoint after a failure, or when the same run
    name and storage are trained again (``resume_from_checkpoint: latest``); otherwise an
    explicit ``resume_from_checkpoint`` path or s3:// URI is where training starts from.
    """
    plan = config["plan"]
    # st_ray prints one progress line per step from rank 0; Ray Train's own per-report lines
    # would double every step in the driver's log.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    use_worker_cpus()  # torch threads = the worker's CPUs (cpus_per_worker)
    ctx = ray_context()
    if ctx.resume_dir is None:
        ctx.resume_dir = explicit_checkpoint(plan)
    prefer_rolling(ctx)  # the newest of either checkpoint series (st_ray.train.rolling)
    ctx.job_id = config.get("job_id")
    ctx.validation = config.get("validation")  # sync or async (chosen by the driver)
    if config.get("stop_check") is not None:
        ctx.should_stop = config["stop_check"]()
    train(plan, ctx)


def train(plan: Plan, ctx: WorkerContext) -> Progress:
    """The loop. Returns where training stopped (for tests and the in-process runner)."""
    progress = Progress(seed=LoopSettings.from_options(plan.options).seed)
    run = build_run(plan, ctx, progress.seed)
    # Noise, timesteps and caption dropout draw from this generator; it is checkpointed so a
    # resumed run draws exactly what the uninterrupted run would have.
    generator = torch.Generator().manual_seed(run.loop.rank_seed(progress.seed, ctx.rank))
    if ctx.resume_dir is not None:
        progress = restore(run, ctx.resume_dir, generator)
    events = Events.start(run, ctx, progress)
    try:
        events.before_training(progress)
        while progress.global_step < run.total_steps and progress.epoch < run.num_epochs:
            batches = plan_for(run, progress).batches(ctx.rank)[progress.batches_in_epoch :]
            run.feed.expect(progress.epoch, batches)
            for group in groups(batches, run.loop.grad_accumulation):
                started = time.perf_counter()
                loss = train_step(run, group, generator, progress.global_step)
                progress.global_step += 1
                progress.batches_in_epoch += len(group)
                events.after_step(
                    progress, step_metrics(run, ctx, progress, group, loss, started), generator
                )
                if progress.global_step >= run.total_steps:
                    break
            else:  # the epoch ran out before the step budget
                progress.epoch += 1
                progress.batches_in_epoch = 0
                events.after_epoch(progress, generator, ran_batches=bool(batches))
        events.after_training(progress)
    except StopRequested:
        events.stopped(progress)
        return progress
    except BaseException as err:
        events.tracker.finish("FAILED")
        events.notifier.failed(err, progress.global_step)
        raise
    finally:
        run.feed.close()  # the read-ahead threads end with the loop, however it ends
        events.notifier.close()
    events.tracker.finish()
    return progress


Group = list[list[data_feed.Sample]]


def groups(batches: Sequence[list[data_feed.Sample]], size: int) -> Iterator[Group]:
    """The batches of one optimizer step each (gradient_accumulation_steps), made one step at
    a time (a plan holds positions, not samples)."""
    for start in range(0, len(batches), size):
        yield list(batches[start : start + size])


def step_metrics(
    run: Run, ctx: WorkerContext, progress: Progress, group: Group, loss: float, started: float
) -> dict[str, Any]:
    elapsed = time.perf_counter() - started
    return {
        "loss": loss,
        "lr": float(run.scheduler.get_last_lr()[0]),
        "epoch": progress.epoch,
        "step_time_s": elapsed,
        "samples_per_s": sum(map(len, group)) * ctx.world_size / max(elapsed, 1e-9),
        **run.metrics,
    }

"""Where a worker runs: its rank, device, how it reports, where it resumes from, and whether
someone outside (a Tune campaign) asks it to stop."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from st_ray.device import pick_device
from st_ray.plan import Plan
from st_ray.storage import S3Settings

Report = Callable[[dict[str, Any], Path | None], None]


def say(line: str) -> None:
    """One line to the job's log. Under Ray Train, print() is patched to tee into Train's
    logger whenever sys.stdout is wrapped, so each line would reach the driver twice; the
    stream itself is forwarded once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device
    report: Report  # metrics (+ a checkpoint directory) to Ray Train, or to the local runner
    resume_dir: Path | None  # the checkpoint to continue from, if any
    # Ray Train's controller takes one report per poll (every 2 s) and report() blocks while
    # the previous one waits, so reporting every step would cap training at a step per poll:
    # under Ray only checkpoint steps are reported (every step still goes to MLflow).
    report_each_step: bool = True
    # An early stop from outside (a Tune campaign's): asked after every step; True ends the
    # loop (no export). Every rank must get the same answer at the same step.
    should_stop: Callable[[], bool] | None = None


class StopRequested(Exception):
    """Someone outside the run (a Tune campaign) stopped it early."""


def ray_context() -> WorkerContext:
    """This worker's rank, device and reporting, from Ray Train."""
    import ray.train

    context = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    resume_dir = None
    if checkpoint is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="st_ray-resume-"))
        checkpoint.to_directory(str(resume_dir))
        if context.get_world_rank() == 0:  # in the job's log: where this attempt starts
            say(f"resuming from checkpoint {checkpoint.path}")

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        metrics = {**metrics, "torch_threads": torch.get_num_threads()}
        if directory is None:
            ray.train.report(metrics)
            return
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
            checkpoint_dir_name=f"checkpoint-{metrics['step']}",
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
        )

    return WorkerContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=pick_device(),
        report=report,
        resume_dir=resume_dir,
        report_each_step=False,
    )


def explicit_checkpoint(plan: Plan) -> Path | None:
    """``resume_from_checkpoint`` when it names a checkpoint (a folder, a name inside
    output_dir, or an s3:// URI), copied to a local folder."""
    value = str(plan.options.get("resume_from_checkpoint") or "").strip()
    if value.lower() in ("", "latest", "none", "null"):
        return None
    if value.startswith("s3://"):
        import ray.train

        from st_ray import storage

        filesystem, path = storage.pyarrow_filesystem(value, S3Settings.from_options(plan.options))
        local = Path(tempfile.mkdtemp(prefix="st_ray-resume-"))
        ray.train.Checkpoint(path=path, filesystem=filesystem).to_directory(str(local))
        return local
    for candidate in (Path(value).expanduser(), Path(plan.options["output_dir"]) / value):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"resume_from_checkpoint: no checkpoint at '{value}'")

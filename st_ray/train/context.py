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

# report(metrics, checkpoint folder or None[, on_saved=...]): ``on_saved(folder, saved)`` is
# called once the folder is in run storage at ``saved``; the folder is then the callback's.
Report = Callable[..., None]
SavedCallback = Callable[[Path, str], None]


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
    # The run folder in run storage (Ray Train's experiment folder; the in-process runner's
    # checkpoint root) on its pyarrow filesystem: where rolling checkpoints go.
    run_fs: Any = None
    run_folder: str | None = None
    job_id: str | None = None  # for webhook payloads (ST_RAY_JOB_ID / SIMPLETUNER_JOB_ID)
    # Where rank 0 validates (st_ray.train.validation_mode); None: synchronously (no Ray).
    validation: Any = None

    @property
    def local_run_folder(self) -> Path | None:
        """The run folder when it is on this machine's filesystem (None for s3://)."""
        import pyarrow.fs as pafs

        if self.run_folder is None or not isinstance(self.run_fs, pafs.LocalFileSystem):
            return None
        return Path(self.run_folder)


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

    storage = context.get_storage()  # a DeveloperAPI: the run folder and its filesystem

    def report(
        metrics: dict[str, Any], directory: Path | None, on_saved: SavedCallback | None = None
    ) -> None:
        metrics = {**metrics, "torch_threads": torch.get_num_threads()}
        if directory is None:
            ray.train.report(metrics)
            return
        extra: dict[str, Any] = {}
        if on_saved is not None:  # Ray's own upload, then the callback (on Ray's upload thread)

            def upload(checkpoint: Any, name: str) -> Any:
                persisted = storage.persist_current_checkpoint(checkpoint, name)
                on_saved(directory, persisted.path)
                return persisted

            extra = {"checkpoint_upload_fn": upload, "delete_local_checkpoint_after_upload": False}
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
            checkpoint_dir_name=f"checkpoint-{metrics['step']}",
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
            **extra,
        )

    return WorkerContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=pick_device(),
        report=report,
        resume_dir=resume_dir,
        report_each_step=False,
        run_fs=storage.storage_filesystem,
        run_folder=storage.experiment_fs_path,
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

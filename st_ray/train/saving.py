"""A run's checkpoints, its resume from one, and the final export.

The weights go through the run's ``Trainable`` (diffusers layout); ``training_state.pt`` and
the manifest are st_ray.train.checkpoints'. Schedule-free optimizers hold training-mode
weights, so every save happens in evaluation mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from st_ray.config.redact import redact
from st_ray.plan import Plan
from st_ray.train import checkpoints, rolling, run_identity
from st_ray.train.checkpoints import Progress
from st_ray.train.context import WorkerContext, say
from st_ray.train.optimizers import set_train_mode

if TYPE_CHECKING:
    from st_ray.publish.publisher import Publisher
    from st_ray.train.build import Run
    from st_ray.train.notifications import RunNotifier


def report_checkpoint(
    run: Run,
    ctx: WorkerContext,
    progress: Progress,
    metrics: dict[str, Any],
    generator: torch.Generator,
    notifier: RunNotifier | None = None,
    publisher: Publisher | None = None,
) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (DDP replicas hold the same weights)
    and hands its weights and manifest to ``publisher`` (push_checkpoints_to_hub)."""
    if ctx.rank != 0:
        ctx.report(metrics, None)
        return
    step = progress.global_step
    if notifier is not None:
        notifier.before_checkpoint(step, staging_folders(ctx))
    directory = write_checkpoint(run, progress, generator)
    if publisher is not None:  # before the report: Ray deletes the folder once uploaded
        weights = [
            f for f in checkpoints.read_manifest(directory)["files"] if f != checkpoints.STATE
        ]
        publisher.checkpoint(directory, [*weights, checkpoints.MANIFEST], step)
    # The report takes ownership of the folder: Ray uploads it in the background and deletes
    # it afterwards (or hands it to on_saved), so training does not wait on the upload.
    if notifier is None or not notifier.wants_saved_checkpoints:
        ctx.report(metrics, directory)
    else:

        def on_saved(folder: Path, saved: str) -> None:
            notifier.checkpoint_saved(
                step,
                folder,
                storage_uri(ctx, saved),
                saved_is_local=ctx.local_run_folder is not None,
                series="checkpoint",
                reported=True,
            )

        ctx.report(metrics, directory, on_saved=on_saved)
        notifier.expect_saved()  # after: a report that raised has no upload to wait for
    if notifier is not None and ctx.run_folder is not None:
        notifier.last_checkpoint = storage_uri(ctx, f"{ctx.run_folder}/checkpoint-{step}")


def save_rolling(
    run: Run,
    ctx: WorkerContext,
    progress: Progress,
    generator: torch.Generator,
    series: rolling.RollingSeries,
    notifier: RunNotifier,
) -> str:
    """Rank 0: one checkpoint of the rolling series, written straight to run storage (never
    reported to Ray Train: see st_ray.train.rolling)."""
    step = progress.global_step
    notifier.before_checkpoint(step, staging_folders(ctx))
    directory = write_checkpoint(run, progress, generator)
    saved = storage_uri(ctx, series.save(directory, step))
    say(f"rolling checkpoint at step {step}: {redact(saved)}")
    notifier.checkpoint_saved(
        step,
        directory,
        saved,
        saved_is_local=ctx.local_run_folder is not None,
        series="rolling checkpoint",
    )
    return saved


def write_checkpoint(run: Run, progress: Progress, generator: torch.Generator) -> Path:
    """A complete checkpoint in a new local folder (the worker's staging copy)."""
    directory = Path(tempfile.mkdtemp(prefix="st_ray-ckpt-"))
    with evaluation_mode(run):
        files = save_weights(run, directory)
        checkpoints.save_state(
            directory,
            {
                # The trained tensors exactly as trained (PEFT keys for a LoRA) for resume;
                # the weight files beside them are the export people load.
                "adapter": run.trainable.state(run.core),
                "text_encoders": run.text_training.state() if run.text_training else None,
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "ema": run.ema.state_dict() if run.ema is not None else None,
                # CREPA's projection head and schedule state (similarity EMA, cutoff).
                "crepa": run.crepa.state_dict() if run.crepa is not None else None,
                "rng": checkpoints.rng_state(),
                "generator": generator.get_state(),
            },
        )
        checkpoints.write_manifest(
            directory,
            progress,
            model_type=run.trainable.model_type,
            family=run.plan.family.name,
            files=[*files, checkpoints.STATE],
            fingerprint=config_fingerprint(run.plan),
            derived=run.derived.as_dict(),
            run_identity=run_identity.record(run.plan, run.steps_per_epoch),
        )
    return directory


def staging_folders(ctx: WorkerContext) -> list[Path]:
    """Local folders a checkpoint is written through: the worker's temp folder, and the run
    folder when run storage is local (the disk guard checks each)."""
    folders = [Path(tempfile.gettempdir())]
    if ctx.local_run_folder is not None:
        folders.append(ctx.local_run_folder)
    return folders


def storage_uri(ctx: WorkerContext, path: str) -> str:
    """A path on the run's filesystem as people name it (s3://bucket/key for S3)."""
    import pyarrow.fs as pafs

    return f"s3://{path}" if isinstance(ctx.run_fs, pafs.S3FileSystem) else path


def prefer_rolling(ctx: WorkerContext) -> None:
    """Resume from the newest checkpoint of either series: Ray Train hands back the regular
    series' latest (or none); a newer rolling checkpoint in the run folder wins."""
    if ctx.run_folder is None:
        return
    current = None
    if ctx.resume_dir is not None:
        current = checkpoints.progress_from(checkpoints.read_manifest(ctx.resume_dir)).global_step
    found = rolling.pick_newer(ctx.run_fs, ctx.run_folder, current)
    if found is None:
        return
    local = rolling.download(
        ctx.run_fs, found.path, Path(tempfile.mkdtemp(prefix="st_ray-resume-"))
    )
    if ctx.rank == 0:
        say(
            f"resuming from rolling checkpoint {redact(storage_uri(ctx, found.path))} (step {found.step})"
        )
    ctx.resume_dir = local


def save_weights(run: Run, directory: Path, *, final: bool = False) -> list[str]:
    """The trained weights in diffusers layout; returns the paths written (relative)."""
    files = run.trainable.save(run.core, directory)
    if run.text_training is not None:  # after: a LoRA's encoder tensors join its file
        files += run.text_training.save(directory, final=final)
    return files


def restore(run: Run, directory: Path, generator: torch.Generator) -> Progress:
    """Continue from a checkpoint: weights, optimizer, schedule, EMA, RNGs; where it stood."""
    manifest = checkpoints.read_manifest(directory)
    state = checkpoints.load_state(directory)
    run.trainable.load(run.core, directory, state["adapter"])
    if run.text_training is not None:
        run.text_training.load(directory, state.get("text_encoders"))
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    progress = checkpoints.progress_from(manifest)
    if run.text_training is not None:  # frozen again when text_encoder_limit was passed
        run.text_training.after_step(progress.global_step, run.total_steps)
    if run.ema is not None and state["ema"] is not None:
        run.ema.load_state_dict(state["ema"])
    if run.crepa is not None and state.get("crepa") is not None:
        run.crepa.load_state_dict(state["crepa"])
    checkpoints.restore_rng(state["rng"])
    generator.set_state(state["generator"])
    return progress


def export_final(run: Run, output_dir: Path) -> list[str]:
    """The final weights in output_dir, loadable by diffusers (EMA weights when use_ema)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    swap = run.ema.swapped_in() if run.ema is not None else contextlib.nullcontext()
    with evaluation_mode(run), swap:
        return save_weights(run, output_dir, final=True)


@contextlib.contextmanager
def evaluation_mode(run: Run) -> Iterator[None]:
    """Schedule-free optimizers hold training-mode weights; saving needs the averaged ones."""
    set_train_mode(run.optimizer, False)
    try:
        yield
    finally:
        set_train_mode(run.optimizer, True)


def config_fingerprint(plan: Plan) -> str:
    text = json.dumps(plan.to_dict()["options"], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def final_output_dir(options: Mapping[str, Any]) -> Path:
    """output_dir, or output_dir/<hub_model_id> when a model id is given (SimpleTuner)."""
    output_dir = Path(options["output_dir"])
    model_id = options.get("hub_model_id")
    return output_dir / str(model_id).split("/")[-1] if model_id else output_dir

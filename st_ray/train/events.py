"""What happens around the steps: metrics and the progress line, eval loss, checkpoints,
validation images, the early-stop question, and the final export with its model card."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from st_ray.publish.publisher import Publisher, Uploaded
from st_ray.train import eval_loss, rolling
from st_ray.train.build import Run
from st_ray.train.checkpoints import Progress
from st_ray.train.context import StopRequested, WorkerContext, say
from st_ray.train.external_validation import ExternalValidation
from st_ray.train.model_card import write_model_card
from st_ray.train.notifications import RunNotifier
from st_ray.train.saving import (
    evaluation_mode,
    export_final,
    final_output_dir,
    report_checkpoint,
    save_rolling,
    storage_uri,
)
from st_ray.train.tracking import tracker_for
from st_ray.train.validation import Validator
from st_ray.train.validation_actor import BackgroundValidation


@dataclass
class Events:
    run: Run
    ctx: WorkerContext
    tracker: Any
    validator: Validator | None
    evaluator: eval_loss.EvalLoss | None  # rank 0 only; every rank reports at its steps
    eval_interval: int | None  # None: no eval loss
    notifier: RunNotifier = field(default_factory=RunNotifier)  # webhooks, hooks, disk guard
    rolling: rolling.RollingSeries | None = None  # rank 0, with checkpointing_rolling_steps
    last_metrics: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False
    checkpointed_step: int = -1
    publisher: Publisher | None = None  # rank 0: Hub and publishing_config uploads
    background: BackgroundValidation | None = None  # rank 0, validation_mode async
    external: ExternalValidation | None = None  # rank 0, validation_method external-script

    @classmethod
    def start(cls, run: Run, ctx: WorkerContext, progress: Progress) -> Events:
        tracker = tracker_for(
            run.plan, ctx.rank, progress.tracking_run_id, derived=run.derived.as_dict()
        )
        progress.tracking_run_id = tracker.run_id
        # Rank 0 renders (the other ranks wait for it at their next gradient all-reduce), or
        # hands the render to a validation actor (validation_mode async).
        validator = None
        # ControlNet training renders no validation images yet (the plan notes it).
        if ctx.rank == 0 and run.loop.validation and not run.plan.options.get("controlnet"):
            out_dir = final_output_dir(run.plan.options)
            trained = run.text_training.encoders if run.text_training is not None else None
            every = eval_loss.step_interval(run.plan.options, run.steps_per_epoch)
            validator = Validator(
                run.plan,
                run.core,
                ctx.device,
                ema=run.ema,
                out_dir=out_dir,
                text_encoders=trained,
                eval_every=every,
            )
        enabled = eval_loss.is_enabled(run.plan)
        events = cls(
            run=run,
            ctx=ctx,
            tracker=tracker,
            validator=validator,
            evaluator=eval_loss.EvalLoss.from_run(run) if enabled and ctx.rank == 0 else None,
            eval_interval=eval_loss.step_interval(run.plan.options, run.steps_per_epoch)
            if enabled
            else None,
            resumed=progress.global_step > 0,
            notifier=RunNotifier.for_worker(run.plan, ctx),
            rolling=rolling_series(run, ctx),
            publisher=Publisher.from_plan(run.plan) if ctx.rank == 0 else None,
        )
        if validator is not None and validator.settings.enabled:
            family = run.plan.family.name
            events.external = ExternalValidation.from_options(run.plan.options, family, say)
        placement = ctx.validation
        asynchronous = placement is not None and placement.mode == "async"
        if validator is not None and validator.settings.enabled and asynchronous:
            events.background = BackgroundValidation(
                placement,
                run.plan,
                run.core,
                eval_every=validator.eval_every,
                out_dir=validator.out_dir,
                on_result=events.validated,
            )
        if events.publisher is not None:  # post_upload_script after each upload
            events.publisher.on_uploaded.append(after_upload(events.notifier, ctx))
        return events

    def before_training(self, progress: Progress) -> None:
        self.notifier.started(progress.global_step, self.run.total_steps)
        if not self.resumed:  # the base model's images, for comparison
            self.validate(progress.global_step, self.validator and self.validator.is_due(0))

    def after_step(
        self, progress: Progress, metrics: dict[str, Any], generator: torch.Generator
    ) -> None:
        step = progress.global_step
        done = step >= self.run.total_steps
        loop = self.run.loop
        if self.background is not None:
            self.background.poll()  # a validation that finished: logged under its own step
        evaluated = self.evaluate(step, done, metrics)
        self.tracker.log_metrics(metrics, step)
        if self.ctx.rank == 0:
            say(progress_line(progress, self.run.total_steps, metrics))
        self.notifier.progress(step, self.run.total_steps, metrics)
        metrics["step"] = step
        self.last_metrics = metrics
        if done or (loop.checkpoint_steps and step % loop.checkpoint_steps == 0):
            self.tracker.flush()  # a run resumed from this checkpoint has every step logged
            report_checkpoint(
                self.run, self.ctx, progress, metrics, generator, self.notifier, self.publisher
            )
            self.checkpointed_step = step
        else:
            if self.rolling is not None and rolling.is_due(step, self.rolling.every):
                save_rolling(self.run, self.ctx, progress, generator, self.rolling, self.notifier)
            if self.ctx.report_each_step or evaluated:  # Tune ranks trials on eval steps
                self.ctx.report(metrics, None)
        if not done and self.ctx.should_stop and self.ctx.should_stop():
            raise StopRequested(step)
        if loop.cache_clear_steps and step % loop.cache_clear_steps == 0:
            empty_device_cache(self.ctx.device)
        self.validate(step, self.validator and self.validator.is_due(step))

    def after_epoch(
        self, progress: Progress, generator: torch.Generator, ran_batches: bool
    ) -> None:
        every = self.run.loop.checkpoint_epochs
        epoch_due = every and progress.epoch % every == 0
        if epoch_due and ran_batches and self.checkpointed_step != progress.global_step:
            self.tracker.flush()
            report_checkpoint(
                self.run,
                self.ctx,
                progress,
                self.last_metrics,
                generator,
                self.notifier,
                self.publisher,
            )
            self.checkpointed_step = progress.global_step
        due = self.validator and self.validator.is_due(
            progress.global_step, epoch_end=True, epoch=progress.epoch
        )
        self.validate(progress.global_step, due)

    def evaluate(self, step: int, final: bool, metrics: dict[str, Any]) -> bool:
        """Add the eval loss to ``metrics`` when due; True on eval steps (on every rank)."""
        if self.eval_interval is None:
            return False
        due = final or (self.eval_interval > 0 and step % self.eval_interval == 0)
        if due and self.evaluator is not None:
            with evaluation_mode(self.run):
                metrics.update(self.evaluator.compute(self.run))
        return due

    def validate(self, step: int, due: bool | None, final: bool = False) -> list[Path]:
        if not due or self.validator is None:
            return []
        if self.external is not None and step > 0:  # step 0: the built-in benchmark
            self.external.run(step, self.notifier.last_checkpoint)
            return []
        if self.background is not None:  # a snapshot now, the images when they are ready
            with evaluation_mode(self.run):
                return self.background.submit(step, final=final)
        with evaluation_mode(self.run):
            images = self.validator.run(step)
        self.validated(step, images, self.validator.metrics.get(step, {}))
        return images

    def validated(self, step: int, images: list[Path], metrics: dict[str, float]) -> None:
        """Log a validation's images and CLIP scores under the step it rendered."""
        if images:
            self.tracker.log_artifact(images[0].parent, "validation")
            self.notifier.validation(step, images)
        if metrics:
            self.tracker.log_metrics(metrics, step)

    def after_training(self, progress: Progress) -> None:
        if self.ctx.rank != 0:
            return
        output_dir = final_output_dir(self.run.plan.options)
        for name in export_final(self.run, output_dir):
            self.tracker.log_artifact(output_dir / name, "final")
        images = self.validate(progress.global_step, self.validator is not None, final=True)
        for runner in (self.background, self.external):
            if runner is not None:
                runner.close()
        card = write_model_card(
            output_dir,
            self.run.plan,
            steps=progress.global_step,
            final_loss=self.last_metrics.get("loss"),
            validation_images=images,
            image_counts={d.dataset_id: len(d.samples) for d in self.run.datasets},
            derived=self.run.derived.as_dict(),
        )
        self.tracker.log_artifact(card, "final")
        if self.publisher is not None:  # after validation, from the final output folder
            self.publisher.final(output_dir, progress.global_step)
            self.publisher.wait()  # raises when the final output could not be published
        self.notifier.finished(progress.global_step, output_dir)

    def stopped(self, progress: Progress) -> None:
        for runner in (self.background, self.external):
            if runner is not None:  # a validation under way finishes (and is logged) first
                runner.close()
        if self.ctx.rank == 0:
            say(f"stopped early by the campaign at step {progress.global_step}")
            if self.publisher is not None:  # checkpoint uploads still under way
                self.publisher.wait()
        self.tracker.finish("KILLED")


def rolling_series(run: Run, ctx: WorkerContext) -> rolling.RollingSeries | None:
    every = int(run.plan.options.get("checkpointing_rolling_steps") or 0)
    if ctx.rank != 0 or not every or ctx.run_folder is None:
        return None
    limit = int(run.plan.options.get("checkpoints_rolling_total_limit") or 1)
    return rolling.RollingSeries(ctx.run_fs, ctx.run_folder, every, limit)


def after_upload(notifier: RunNotifier, ctx: WorkerContext) -> Callable[[Uploaded], None]:
    """The publisher's callback that runs post_upload_script. A checkpoint's staged copy is
    gone once the callbacks return, so its script gets the checkpoint in run storage."""

    def uploaded(upload: Uploaded) -> None:
        local: str | Path = upload.local
        if upload.kind == "checkpoint" and ctx.run_folder is not None:
            local = storage_uri(ctx, f"{ctx.run_folder}/checkpoint-{upload.step}")
        notifier.uploaded(local, upload.remote, upload.step)

    return uploaded


def progress_line(progress: Progress, total_steps: int, metrics: dict[str, Any]) -> str:
    return (
        f"step {progress.global_step}/{total_steps}  epoch {progress.epoch}  "
        f"loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
        f"{metrics['samples_per_s']:.1f} samples/s  "
        f"data wait {metrics.get('data_wait_s', 0.0) * 1000:.0f} ms"
        + (f"  eval loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else "")
    )


def empty_device_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()

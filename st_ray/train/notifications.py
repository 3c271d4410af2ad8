"""The run's messages to the outside world, from rank 0: webhook events, hook scripts and the
disk guard before each checkpoint (st_ray.notify holds the parts). Other ranks get a notifier
whose parts are all off, so the loop calls it the same way on every rank."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from st_ray.config.redact import redact
from st_ray.notify.disk_guard import DiskGuard, parse_size
from st_ray.notify.hooks import ScriptRunner, UploadHook, context_values
from st_ray.notify.webhooks import Event, WebhookSender, parse_targets
from st_ray.plan import Plan
from st_ray.train.context import WorkerContext, say
from st_ray.train.run_identity import run_name

# The job id webhook payloads carry: st_ray's own name first, then SimpleTuner's.
JOB_ID_VARIABLES = ("ST_RAY_JOB_ID", "SIMPLETUNER_JOB_ID")


def job_id_from_env(env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    return next((env[name] for name in JOB_ID_VARIABLES if env.get(name)), None)


class RunNotifier:
    def __init__(
        self,
        *,
        sender: WebhookSender | None = None,
        runner: ScriptRunner | None = None,
        guard: DiskGuard | None = None,
        options: Mapping[str, Any] | None = None,
        values: Mapping[str, Any] | None = None,
        progress_every_s: float | None = None,
    ):
        self.sender = sender
        self.runner = runner
        self.guard = guard
        self.options = dict(options or {})
        self.values = dict(values or {})  # the hooks' placeholders from the options
        self.progress_every_s = progress_every_s
        self.last_progress: float | None = None  # the first step reports at once
        self.last_checkpoint: str | None = None  # where the last good one was saved
        # Checkpoints handed to Ray Train whose upload has not called checkpoint_saved yet.
        self._pending_saves = 0
        self._saved = threading.Condition()
        self.upload_wait_s = 600.0  # how long close waits for them
        self.upload_hook = (
            UploadHook(str(self.options["post_upload_script"]), self.values, runner)
            if runner is not None and self.options.get("post_upload_script")
            else None
        )

    @classmethod
    def for_worker(cls, plan: Plan, ctx: WorkerContext) -> RunNotifier:
        options = plan.options
        if ctx.rank != 0:
            return cls()
        sender = None
        if options.get("webhook_config"):
            sender = WebhookSender(
                parse_targets(options["webhook_config"], _config_dir(plan)),
                job_id=ctx.job_id,
                run_name=run_name(plan),
                log=say,
            )
        hooks = options.get("post_checkpoint_script") or options.get("post_upload_script")
        guard = None
        if options.get("disk_low_threshold"):
            guard = DiskGuard(
                threshold=parse_size(options["disk_low_threshold"]),
                action=str(options.get("disk_low_action") or "stop"),
                script=options.get("disk_low_script"),
                log=say,
            )
        interval = options.get("webhook_reporting_interval")
        return cls(
            sender=sender,
            runner=ScriptRunner(say) if hooks else None,
            guard=guard,
            options=options,
            values=context_values(options, plan.family.name),
            progress_every_s=float(interval) if interval else None,
        )

    @property
    def wants_saved_checkpoints(self) -> bool:
        """Whether checkpoint saves must call ``checkpoint_saved`` (webhooks or a hook)."""
        return self.sender is not None or bool(
            self.runner and self.options.get("post_checkpoint_script")
        )

    # ------------------------------------------------------------------ events

    def _send(self, event: Event) -> None:
        if self.sender is not None:
            self.sender.send(event)

    def started(self, step: int, total_steps: int) -> None:
        where = f"resumed at step {step} of {total_steps}" if step else f"{total_steps} steps"
        self._send(
            Event(
                "training.started",
                f"training started ({where})",
                data={"global_step": step, "total_steps": total_steps},
            )
        )

    def progress(self, step: int, total_steps: int, metrics: Mapping[str, Any]) -> None:
        """A progress event when ``webhook_reporting_interval`` seconds have passed."""
        if self.sender is None or not self.progress_every_s:
            return
        now = time.monotonic()
        if self.last_progress is not None and now - self.last_progress < self.progress_every_s:
            return
        self.last_progress = now
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        self._send(
            Event(
                "training.progress",
                f"step {step}/{total_steps}  loss {numbers.get('loss', float('nan')):.4f}",
                data={"global_step": step, "total_steps": total_steps, "metrics": numbers},
                raw_only=True,
            )
        )

    def validation(self, step: int, images: list[Path]) -> None:
        if images:
            self._send(
                Event(
                    "validation.images",
                    f"validation images at step {step}",
                    data={"global_step": step, "files": [p.name for p in images]},
                    images=list(images),
                )
            )

    def before_checkpoint(self, step: int, folders: list[Path]) -> None:
        """The disk guard: returns when there is room (stop: raises DiskSpaceLow)."""
        if self.guard is not None:
            self.guard.check(folders, step=step, last_checkpoint=self.last_checkpoint)

    def expect_saved(self) -> None:
        """A checkpoint was handed to Ray Train, which calls ``checkpoint_saved(reported=True)``
        from its upload thread; ``close`` waits for it."""
        with self._saved:
            self._pending_saves += 1

    def checkpoint_saved(
        self,
        step: int,
        staging: Path,
        saved: str,
        *,
        saved_is_local: bool,
        series: str,
        reported: bool = False,
    ) -> None:
        """A checkpoint is in run storage (``saved``): the webhook event and the
        post_checkpoint_script. ``staging`` is the worker's local copy: the script reads it when
        run storage is remote, and it is deleted once no one needs it."""
        try:
            self._checkpoint_saved(step, staging, saved, saved_is_local, series)
        finally:
            if reported:
                with self._saved:
                    self._pending_saves -= 1
                    self._saved.notify_all()

    def _checkpoint_saved(
        self, step: int, staging: Path, saved: str, saved_is_local: bool, series: str
    ) -> None:
        self.last_checkpoint = saved
        self._send(
            Event(
                "training.checkpoint",
                f"{series} saved at step {step}",
                data={"global_step": step, "path": saved, "series": series},
            )
        )
        template = self.options.get("post_checkpoint_script")
        if not template or self.runner is None:
            shutil.rmtree(staging, ignore_errors=True)
            return
        local = saved if saved_is_local else str(staging)
        if saved_is_local:
            shutil.rmtree(staging, ignore_errors=True)
        values = {**self.values, "local_checkpoint_path": local, "global_step": step}
        values["remote_checkpoint_path"] = ""
        self.runner.submit(
            "post_checkpoint_script",
            str(template),
            values,
            cleanup=None if saved_is_local else staging,
        )

    def uploaded(self, local_path: str | Path, remote_path: str, step: int | None) -> None:
        """After an upload (Hub, publishing target): runs post_upload_script."""
        if self.upload_hook is not None:
            self.upload_hook(local_path, remote_path, step)

    def failed(self, error: BaseException, step: int) -> None:
        self.upload_wait_s = min(self.upload_wait_s, 30.0)  # the run is over: do not linger
        self._send(
            Event(
                "training.error",
                f"training failed at step {step}: {type(error).__name__}: {redact(str(error))}",
                severity="error",
                data={"global_step": step, "error": type(error).__name__},
            )
        )

    def finished(self, step: int, output_dir: Path) -> None:
        self._send(
            Event(
                "training.finished",
                f"training finished at step {step}; final weights in {output_dir}",
                data={"global_step": step, "output_dir": str(output_dir)},
            )
        )

    def close(self) -> None:
        """Wait for checkpoints still uploading, deliver what is queued and wait for running
        hook scripts (each bounded)."""
        with self._saved:
            if not self._saved.wait_for(lambda: self._pending_saves <= 0, self.upload_wait_s):
                say(f"notifications: {self._pending_saves} checkpoint upload(s) did not finish")
        if self.sender is not None:
            self.sender.close()
        if self.runner is not None:
            self.runner.close()


def _config_dir(plan: Plan) -> Path | None:
    """A webhook_config file is read relative to the config file's folder, as at --dry-run."""
    path = plan.config.config_path
    return path.parent if path is not None else None

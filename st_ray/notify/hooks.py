"""Hook scripts: ``post_checkpoint_script`` after each checkpoint is saved, ``post_upload_script``
after each upload, with SimpleTuner's placeholders filled in.

The command is split like a shell would split it, then each word's placeholders
(``{local_checkpoint_path}``, ``{global_step}``, ``{remote_checkpoint_path}``,
``{tracker_run_name}``, ``{tracker_project_name}``, ``{model_family}``, ``{model_type}``,
``{lora_type}``, ``{huggingface_path}`` and any ``validation_*`` option) are replaced; a missing
value becomes an empty string. Scripts run one after another on a background thread on the
worker that saved the checkpoint (rank 0's node), their output goes to the job's log line by
line, and a failing script is reported without stopping training.
"""

from __future__ import annotations

import queue
import shlex
import shutil
import string
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLACEHOLDERS = (
    "local_checkpoint_path",
    "global_step",
    "remote_checkpoint_path",
    "tracker_run_name",
    "tracker_project_name",
    "model_family",
    "model_type",
    "lora_type",
    "huggingface_path",
)
HOOK_OPTIONS = ("post_checkpoint_script", "post_upload_script")


def placeholders_in(template: str) -> list[str]:
    """The placeholder names a command uses (ValueError for a malformed one)."""
    names = []
    for word in shlex.split(template):
        names += [name for _, name, _, _ in string.Formatter().parse(word) if name is not None]
    return names


def check_template(template: str) -> str | None:
    """What is wrong with a hook command, or None."""
    try:
        words = shlex.split(template)
        names = placeholders_in(template)
    except ValueError as err:
        return f"cannot be split into a command ({err})"
    if not words:
        return "is empty"
    unknown = [n for n in names if n not in PLACEHOLDERS and not n.startswith("validation_")]
    if unknown:
        return (
            f"unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; accepted: "
            + ", ".join("{" + n + "}" for n in PLACEHOLDERS)
            + " and any {validation_*} option"
        )
    return None


def context_values(options: Mapping[str, Any], family: str) -> dict[str, Any]:
    """The placeholders every hook gets from the run's options."""
    values: dict[str, Any] = {
        "tracker_run_name": options.get("tracker_run_name"),
        "tracker_project_name": options.get("tracker_project_name"),
        "model_family": family,
        "model_type": options.get("model_type"),
        "lora_type": options.get("lora_type") if options.get("model_type") == "lora" else None,
        "huggingface_path": options.get("hub_model_id"),
    }
    values.update({k: v for k, v in options.items() if k.startswith("validation_")})
    return values


def render(template: str, values: Mapping[str, Any]) -> list[str]:
    """The command's words with placeholders replaced (missing values: empty string)."""
    filled = {n: "" if values.get(n) is None else str(values[n]) for n in placeholders_in(template)}
    return [word.format(**filled) for word in shlex.split(template)]


@dataclass
class _Job:
    hook: str  # the option name, for the log
    argv: list[str]
    cleanup: Path | None = None  # a staging copy the script reads, deleted when it ends


class ScriptRunner:
    """Runs hook commands one at a time on a daemon thread; never raises into training."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.failures = 0
        self.finished = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="st_ray-hooks", daemon=True)
        self._thread.start()

    def submit(
        self, hook: str, template: str, values: Mapping[str, Any], cleanup: Path | None = None
    ) -> None:
        """Queue one run of ``template``; ``cleanup`` is deleted once it has run."""
        self._queue.put(_Job(hook, render(template, values), cleanup))

    def close(self, wait_s: float = 1800.0) -> None:
        """Let queued scripts finish (at most ``wait_s`` seconds), then stop."""
        pending = self._queue.qsize()
        if pending:
            self.log(f"hooks: waiting for {pending} queued hook script(s) to finish")
        self._queue.put(None)
        self._thread.join(wait_s)
        if self._thread.is_alive():
            self.log(f"hooks: hook scripts still running after {wait_s:g} s; not waiting longer")

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._run(job)
            finally:
                if job.cleanup is not None:
                    shutil.rmtree(job.cleanup, ignore_errors=True)

    def _run(self, job: _Job) -> None:
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                job.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            )
        except OSError as err:
            self.failures += 1
            self.log(f"{job.hook}: cannot start '{job.argv[0]}' ({err.strerror}); training goes on")
            return
        assert process.stdout is not None
        for line in process.stdout:
            self.log(f"[{job.hook}] {line.rstrip()}")
        code = process.wait()
        took = time.monotonic() - started
        self.finished += 1
        if code != 0:
            self.failures += 1
            self.log(
                f"{job.hook}: '{job.argv[0]}' exited with {code} after {took:.1f} s; training goes on"
            )
        else:
            self.log(f"{job.hook}: '{job.argv[0]}' finished in {took:.1f} s")


class UploadHook:
    """``post_upload_script`` as a callback for whatever uploads (the Hub, publishing targets):
    call it with (local path, remote path or URI, step) after each upload; it returns at once.
    ``close`` waits for the scripts it started."""

    def __init__(self, template: str, values: Mapping[str, Any], runner: ScriptRunner):
        self.template = template
        self.values = dict(values)
        self.runner = runner

    def __call__(self, local_path: str | Path, remote_path: str, step: int | None) -> None:
        values = {
            **self.values,
            "local_checkpoint_path": str(local_path),
            "remote_checkpoint_path": remote_path,
            "global_step": step,
        }
        self.runner.submit("post_upload_script", self.template, values)

    def close(self, wait_s: float = 1800.0) -> None:
        self.runner.close(wait_s)


def upload_hook(
    options: Mapping[str, Any], family: str, log: Callable[[str], None] = print
) -> UploadHook | None:
    """The run's ``post_upload_script`` callback, None when the option is unset. For code that
    uploads outside the training worker (the driver); the worker has its own
    (``st_ray.train.notifications.RunNotifier.uploaded``)."""
    template = options.get("post_upload_script")
    if not template:
        return None
    return UploadHook(str(template), context_values(options, family), ScriptRunner(log))

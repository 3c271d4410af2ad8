"""External validation (validation_method 'external-script'): at each validation due after
step 0, run ``validation_external_script`` instead of rendering, with the hook placeholders
filled (``{local_checkpoint_path}``: the latest checkpoint in run storage, ``{global_step}``,
``{tracker_run_name}``, ``{model_family}``, any ``{validation_*}`` option...; see
st_ray.notify.hooks). As in SimpleTuner, the step-0 benchmark renders with the built-in
pipeline (no checkpoint exists yet) and a validation before the first checkpoint is skipped
with a warning.

In the foreground (the default) training waits for the script, at most ``TIMEOUT_S``;
``validation_external_background`` queues it on a background thread (one at a time) and
training goes on. Either way its output lines and exit code go to the job's log, and a script
that fails, hangs or cannot start never stops training.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

from st_ray.notify.hooks import ScriptRunner, check_template, context_values, render

OPTION = "validation_external_script"
TIMEOUT_S = 3600.0


def is_external(options: Mapping[str, Any]) -> bool:
    return str(options.get("validation_method") or "").replace("_", "-") == "external-script"


def problems(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for an external validation that cannot run (checked before any work)."""
    if not is_external(options):
        return []
    template = options.get(OPTION)
    if not template:
        return [(OPTION, "validation_method 'external-script' needs the command to run here")]
    wrong = check_template(str(template))
    return [(OPTION, f"the command {wrong}")] if wrong else []


class ExternalValidation:
    """Runs the validation script for a step; never raises into training."""

    def __init__(
        self,
        template: str,
        values: Mapping[str, Any],
        *,
        background: bool,
        log: Callable[[str], None],
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.template = template
        self.values = dict(values)
        self.log = log
        self.timeout_s = timeout_s
        self.runner = ScriptRunner(log) if background else None
        self.exit_codes: dict[int, int | None] = {}  # foreground runs: step -> code (None: none)
        self.done: set[int] = set()  # a step due twice (interval and final) runs once

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], family: str, log: Callable[[str], None]
    ) -> ExternalValidation | None:
        if not is_external(options):
            return None
        return cls(
            str(options[OPTION]),
            context_values(options, family),
            background=bool(options.get("validation_external_background")),
            log=log,
        )

    def run(self, step: int, checkpoint: str | None) -> bool:
        """Run (or queue) the script for ``step``; False when skipped or it failed."""
        if step in self.done:
            return True
        if not checkpoint:
            self.log(
                f"{OPTION}: validation of step {step} skipped: no checkpoint saved yet "
                "({local_checkpoint_path} would be empty)"
            )
            return False
        values = {
            **self.values,
            "local_checkpoint_path": checkpoint,
            "remote_checkpoint_path": "",
            "global_step": step,
        }
        self.done.add(step)
        if self.runner is not None:
            self.runner.submit(OPTION, self.template, values)
            return True
        return self._foreground(step, render(self.template, values))

    def _foreground(self, step: int, argv: list[str]) -> bool:
        started = time.monotonic()
        self.exit_codes[step] = None
        try:
            done = subprocess.run(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                timeout=self.timeout_s,
            )
        except OSError as err:
            self.log(f"{OPTION}: cannot start '{argv[0]}' ({err.strerror}); training goes on")
            return False
        except subprocess.TimeoutExpired:
            self.log(f"{OPTION}: '{argv[0]}' killed after {self.timeout_s:g} s; training goes on")
            return False
        for line in (done.stdout or "").splitlines():
            self.log(f"[{OPTION}] {line}")
        took = time.monotonic() - started
        self.exit_codes[step] = done.returncode
        if done.returncode != 0:
            self.log(
                f"{OPTION}: '{argv[0]}' exited with {done.returncode} after {took:.1f} s at step "
                f"{step}; training goes on"
            )
            return False
        self.log(f"{OPTION}: '{argv[0]}' finished in {took:.1f} s (step {step})")
        return True

    def close(self) -> None:
        """Wait for queued background scripts."""
        if self.runner is not None:
            self.runner.close()

"""Where validations run: synchronously on rank 0 (SimpleTuner's way: every rank waits for the
render at its next all-reduce), or asynchronously on a validation actor of their own while
training goes on. ``choose`` decides from validation_mode and the cluster; ``Backlog`` is the
back-pressure rule (at most one validation pending). Both are pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ValidationPlacement:
    """The mode chosen and, for 'async', what the validation actor asks of Ray."""

    mode: Literal["sync", "async"]
    reason: str
    num_gpus: float = 0.0
    num_cpus: float = 1.0

    def describe(self) -> str:
        if self.mode == "sync":
            return f"synchronous on rank 0 ({self.reason})"
        where = f"{self.num_gpus:g} GPU" if self.num_gpus else "CPU"
        return f"asynchronous on a validation actor ({where}, {self.num_cpus:g} CPU; {self.reason})"


SYNC_ONLY = {
    "use_ema": "use_ema renders the EMA weights too, which only rank 0 holds",
    "train_text_encoder": "the trained text encoders live on rank 0 and are not snapshotted",
    "tread_config": "TREAD's routing hooks sit on rank 0's denoiser",
}


def async_blocker(options: Mapping[str, Any]) -> str | None:
    """Why this run cannot validate on an actor (None when it can)."""
    for key, reason in SYNC_ONLY.items():
        if options.get(key):
            return reason
    if options.get("model_type") == "lora" and options.get("lora_type") == "lycoris":
        return "a LyCORIS network is hooked into rank 0's denoiser and is not snapshotted"
    return None


def choose(
    options: Mapping[str, Any],
    nodes: Sequence[Mapping[str, float]],
    worker_resources: Mapping[str, float],
    num_workers: int,
) -> ValidationPlacement:
    """validation_mode 'sync' or 'async' as asked (async falls back to sync, saying why, when
    the run cannot snapshot what it renders); 'auto': async when the cluster has a GPU the
    Train workers do not take, else sync. A CPU-only cluster validates synchronously under
    'auto': a render on the workers' CPUs would slow every step instead of only some."""
    mode = str(options.get("validation_mode") or "auto")
    cpus = float(
        options.get("validation_actor_cpus")
        if options.get("validation_actor_cpus") is not None
        else 1
    )
    asked_gpus = options.get("validation_actor_gpus")
    if mode == "sync":
        return ValidationPlacement("sync", "validation_mode sync")
    blocker = async_blocker(options)
    if blocker:
        return ValidationPlacement("sync", blocker)
    total = sum(float(node.get("GPU", 0)) for node in nodes)
    spare = total - num_workers * float(worker_resources.get("GPU", 0))
    if mode == "async":
        gpus = float(asked_gpus) if asked_gpus is not None else (1.0 if spare >= 1 else 0.0)
        return ValidationPlacement("async", "validation_mode async", gpus, cpus)
    gpus = float(asked_gpus) if asked_gpus is not None else 1.0
    if total <= 0:
        return ValidationPlacement("sync", "auto: CPU-only cluster, no spare device")
    if gpus <= 0 or spare < gpus:
        return ValidationPlacement("sync", f"auto: no spare GPU ({spare:g} free of {total:g})")
    return ValidationPlacement("async", f"auto: {spare:g} spare GPU", gpus, cpus)


class Backlog:
    """Back-pressure for asynchronous validations: at most one pending. A validation due while
    another is still rendering is skipped (the caller warns); the final one waits for the
    pending one and always runs."""

    def __init__(self) -> None:
        self.pending: int | None = None  # the step being rendered
        self.skipped: list[int] = []

    def offer(self, step: int, final: bool = False) -> Literal["start", "skip", "wait"]:
        """'start' it now, 'skip' it, or 'wait' for the pending one first (final only)."""
        if self.pending is None:
            return "start"
        if final:
            return "wait"
        self.skipped.append(step)
        return "skip"

    def started(self, step: int) -> None:
        self.pending = step

    def finished(self) -> None:
        self.pending = None

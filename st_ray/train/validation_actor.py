"""Asynchronous validation: renders (and CLIP scores) on a Ray actor of their own while the
Train workers go on training.

Rank 0 takes a snapshot of the trainable weights at the step a validation is due (a CPU copy
of the parameters that train: the LoRA weights, or the whole denoiser for a full fine-tune)
and hands it to the actor, which holds its own copy of the denoiser (sent once, when the
actor starts) and the validation pipeline. The actor returns the PNG bytes and the scores;
rank 0 writes them under ``<output_dir>/validation/step-<step>/`` and logs them to MLflow
under that step, whatever step training has reached by then. At most one validation is
pending (``validation_mode.Backlog``); the final one always runs before the job ends. An
actor that dies (killed, OOM) costs that validation only: the next one starts a fresh actor.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_ray.train.validation_mode import Backlog, ValidationPlacement

if TYPE_CHECKING:
    import torch

    from st_ray.plan import Plan

log = logging.getLogger(__name__)

# (step, image paths written on rank 0, CLIP scores) -> logged by the caller
OnResult = Callable[[int, list[Path], dict[str, float]], None]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the parameters that train (what changes between validations)."""
    return {
        name: p.detach().to("cpu", copy=True)
        for name, p in model.named_parameters()
        if p.requires_grad
    }


class ValidationWorker:
    """The actor's side: its own denoiser copy, the validation pipeline and CLIP scorer."""

    def __init__(self, plan: Plan, denoiser: torch.nn.Module, eval_every: int, gpu: bool) -> None:
        import torch

        from st_ray.train.validation import Validator

        device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        self.out_dir = Path(tempfile.mkdtemp(prefix="st_ray-validation-"))
        self.denoiser = denoiser.to(device)
        self.validator = Validator(
            plan, self.denoiser, device, out_dir=self.out_dir, eval_every=eval_every
        )

    def render(self, step: int, weights: dict[str, Any]) -> dict[str, Any]:
        started = time.time()
        missing = set(weights) - {n for n, _ in self.denoiser.named_parameters()}
        if missing:
            raise RuntimeError(f"validation snapshot has unknown weights: {sorted(missing)[:3]}")
        self.denoiser.load_state_dict(weights, strict=False)
        paths = self.validator.run(step)
        files = {p.name: p.read_bytes() for p in paths}
        if paths:
            shutil.rmtree(paths[0].parent, ignore_errors=True)
        return {
            "step": step,
            "files": files,
            "metrics": self.validator.metrics.pop(step, {}),
            "started": started,
            "ended": time.time(),
        }


class BackgroundValidation:
    """Rank 0's side: submits validations to the actor and logs what comes back."""

    def __init__(
        self,
        placement: ValidationPlacement,
        plan: Plan,
        denoiser: torch.nn.Module,
        *,
        eval_every: int,
        out_dir: Path,
        on_result: OnResult,
        worker_class: type = ValidationWorker,
    ) -> None:
        self.worker_class = worker_class  # the actor's class (tests: one that dies)
        self.placement = placement
        self.plan = plan
        self.denoiser = denoiser
        self.eval_every = eval_every
        self.out_dir = Path(out_dir)
        self.on_result = on_result
        self.backlog = Backlog()
        self.actor: Any = None
        self.ref: Any = None
        self.submitted: set[int] = set()
        self.results: dict[int, list[Path]] = {}
        self.timings: dict[int, tuple[float, float]] = {}  # step -> actor's (start, end)

    def submit(self, step: int, final: bool = False) -> list[Path]:
        """Start the validation of ``step`` with the weights as they are now. The final one
        waits for any pending validation, then for its own, and returns its images."""
        self.poll()
        if step in self.submitted:
            return (
                self.wait()
                if final and self.backlog.pending == step
                else self.results.get(step, [])
            )
        decision = self.backlog.offer(step, final)
        if decision == "skip":
            log.warning(
                "validation of step %d skipped: the validation of step %d is still rendering "
                "(at most one is pending)",
                step,
                self.backlog.pending,
            )
            return []
        if decision == "wait":
            self.wait()
        weights = trainable_state(self.denoiser)
        if self.actor is None:
            self.actor = self._start_actor()
        self.ref = self.actor.render.remote(step, weights)
        self.submitted.add(step)
        self.backlog.started(step)
        return self.wait() if final else []

    def poll(self) -> None:
        """Log a finished validation, if one is (never blocks)."""
        import ray

        if self.ref is not None and ray.wait([self.ref], timeout=0)[0]:
            self.wait()

    def wait(self) -> list[Path]:
        """Block until the pending validation is done; its images (none if the actor died)."""
        import ray

        if self.ref is None:
            return []
        step = self.backlog.pending
        ref, self.ref = self.ref, None
        self.backlog.finished()
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as err:  # killed, OOM, its node lost
            log.warning(
                "the validation actor died during the validation of step %s (%s); training "
                "goes on and the next validation starts a fresh actor",
                step,
                type(err).__name__,
            )
            self.actor = None
            return []
        folder = self.out_dir / "validation" / f"step-{result['step']}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, data in result["files"].items():
            (folder / name).write_bytes(data)
            paths.append(folder / name)
        self.results[result["step"]] = paths
        self.timings[result["step"]] = (result["started"], result["ended"])
        self.on_result(result["step"], paths, result["metrics"])
        return paths

    def close(self) -> None:
        """Wait for a pending validation and end the actor."""
        import ray

        self.wait()
        if self.actor is not None:
            ray.kill(self.actor)
            self.actor = None

    def _start_actor(self) -> Any:
        import ray

        actor_class = ray.remote(self.worker_class)
        base = copy.deepcopy(self.denoiser).to("cpu")
        gpu = self.placement.num_gpus > 0
        return actor_class.options(
            num_gpus=self.placement.num_gpus,
            num_cpus=self.placement.num_cpus,
            max_restarts=0,
            # Outside the Train workers' placement group: its own resources.
            scheduling_strategy="DEFAULT",
        ).remote(self.plan, base, self.eval_every, gpu)

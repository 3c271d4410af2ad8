"""Early stopping that lets a trial end on its own, so its Ray Train run shuts down cleanly.

When Tune stops a trial it ends the trial's actor, which takes the Ray Train controller it
owns down with it; Ray Train then relies on a background cleaner (using the Ray State API,
which needs the dashboard) to give the workers' placement group back. Instead, ASHA's "stop"
is turned into a request on a small named actor (the stop board); each trial's workers ask it
after every report and return from their loop when asked, so the Train run finishes
normally and releases its workers at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

NAMESPACE = "st_ray"


class StopBoard:
    """Run names whose training should stop (a Ray actor; see ``start_board``)."""

    def __init__(self) -> None:
        self.requested: set[str] = set()

    def request(self, run_name: str) -> None:
        self.requested.add(run_name)

    def is_requested(self, run_name: str) -> bool:
        return run_name in self.requested


def board_name(campaign: str) -> str:
    return f"st_ray-tune-stop-{campaign}"


def start_board(name: str) -> Any:
    """The campaign's board, owned by the campaign driver (it ends with the campaign)."""
    import ray

    handle = (
        ray.remote(num_cpus=0)(StopBoard)
        .options(name=name, namespace=NAMESPACE, get_if_exists=True)
        .remote()
    )
    ray.get(handle.is_requested.remote(""))  # started and registered under its name
    return handle


class GracefulASHA(ASHAScheduler):
    """ASHA whose early stops are requests the trial acts on at its next report."""

    def __init__(self, *, board: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.board = board
        self.stopping: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if _diverged(result.get(self._metric)):
            # NaN/inf cannot recover, and would poison the rungs' quantiles: stop at once.
            action = TrialScheduler.STOP
        else:
            action = super().on_trial_result(tune_controller, trial, result)
        if action != TrialScheduler.STOP:
            return action
        if trial.trial_id not in self.stopping:
            self.stopping.add(trial.trial_id)
            self.request_stop(trial.trial_id)
        return TrialScheduler.CONTINUE

    def request_stop(self, trial_id: str) -> None:
        import ray

        ray.get_actor(self.board, namespace=NAMESPACE).request.remote(trial_id)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if _diverged(result.get(self._metric)):
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)


def _diverged(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isfinite(value)


def is_requested(board: str, run_name: str) -> bool:
    import ray

    return ray.get(ray.get_actor(board, namespace=NAMESPACE).is_requested.remote(run_name))


def stop_check(board: str, run_name: str) -> Callable[[], bool]:
    """For the Train workers: has the campaign asked this run to stop? Rank 0 asks the board
    and tells the other ranks, so every rank leaves the loop at the same step."""
    import ray
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    handle = ray.get_actor(board, namespace=NAMESPACE)

    def check() -> bool:
        answer = None
        if ray.train.get_context().get_world_rank() == 0:
            answer = ray.get(handle.is_requested.remote(run_name))
        return bool(broadcast_from_rank_zero(answer))

    return check

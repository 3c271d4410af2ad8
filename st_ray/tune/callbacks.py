"""Driver-side bookkeeping of a campaign, kept in Tune's experiment state so that it survives
an interruption: every trial's eval-loss curve, latest checkpoint, status and how often it was
started, and the early-stopping rungs and stop requests (Tune does not checkpoint its
scheduler's state, so a resumed campaign would otherwise compare the remaining trials with
nothing, and restart trials it had already stopped)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune import Callback

CHECKPOINT_KEY = "checkpoint_path"  # added to each checkpoint report by TuneReportCallback


class CampaignCallback(Callback):
    def __init__(self, metric: str, scheduler: Any = None) -> None:
        self.metric = metric
        self.scheduler = scheduler  # the same ASHA object Tune uses (pickled together)
        self.trials: dict[str, dict[str, Any]] = {}
        self.on_change: Callable[[CampaignCallback], None] | None = None

    def _trial(self, trial: Any) -> dict[str, Any]:
        record = self.trials.setdefault(
            trial.trial_id,
            {"config": dict(trial.config), "curve": [], "starts": 0, "status": "PENDING"},
        )
        return record

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._trial(trial)
        record["starts"] += 1
        record["status"] = "RUNNING"

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        record = self._trial(trial)
        step = result.get("step")
        record["step"] = step
        record["loss"] = result.get("loss")
        if self.metric in result:
            record["curve"].append((step, float(result[self.metric])))
        if result.get(CHECKPOINT_KEY):
            record["checkpoint"] = result[CHECKPOINT_KEY]

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial(trial)["status"] = "TERMINATED"
        self._changed()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial(trial)["status"] = "ERROR"
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    def get_state(self) -> dict[str, Any]:
        stopping = sorted(getattr(self.scheduler, "stopping", ()))
        return {"trials": self.trials, "rungs": _rungs(self.scheduler), "stopping": stopping}

    def set_state(self, state: dict[str, Any]) -> None:
        self.trials = state.get("trials", {})
        for record in self.trials.values():
            if record["status"] == "RUNNING":
                record["status"] = "INTERRUPTED"
        rungs = state.get("rungs")
        if rungs and self.scheduler is not None:
            for bracket, saved in zip(self.scheduler._brackets, rungs, strict=False):
                bracket._rungs = [(milestone, dict(recorded)) for milestone, recorded in saved]
        if state.get("stopping") and self.scheduler is not None:
            # Stops asked for before the interruption still hold: the trial ends on restart.
            self.scheduler.stopping = set(state["stopping"])
            for trial_id in state["stopping"]:
                self.scheduler.request_stop(trial_id)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["on_change"] = None  # a driver-side hook, set again on every run
        return state


def _rungs(scheduler: Any) -> list | None:
    """ASHA's recorded results per rung (private attributes of Ray's AsyncHyperBand)."""
    brackets = getattr(scheduler, "_brackets", None)
    if not brackets:
        return None
    return [[(m, dict(recorded)) for m, recorded in b._rungs] for b in brackets]

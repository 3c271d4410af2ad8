"""One trial: the campaign's plan with the trial's values, trained as a Ray Train run.

The Tune function trainable builds and fits a ``TorchTrainer`` (Ray Train V2's pattern);
``TuneReportCallback`` forwards each report of rank 0 (loss, eval loss, step) and the path of
every checkpoint to Tune. The trial never touches the caches except to read them.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from st_ray.config.options import CANONICAL
from st_ray.config.values import coerce
from st_ray.plan import Plan


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares (shipped once to the trial actors)."""

    plan: Plan  # the campaign's plan, driver environment removed
    train_storage: tuple[str, Any]  # (path, pyarrow filesystem) holding the trials' Train runs
    trials_dir: str  # each trial's output_dir is <trials_dir>/<trial id>
    parent_run_id: str | None  # the campaign's MLflow run
    stop_board: str  # the named actor early stops are requested on (st_ray.tune.stopping)
    workers: int
    resources_per_worker: dict[str, float]


def trial_plan(setup: TrialSetup, values: dict[str, Any], trial_id: str) -> Plan:
    """The campaign plan with the trial's swept values and its own name, outputs and run."""
    base = setup.plan
    options = dict(base.config.values)
    provenance = dict(base.config.provenance)
    for name, value in values.items():
        options[name] = coerce(CANONICAL[name], value)
        provenance[name] = "sweep"
    output_dir = Path(setup.trials_dir) / trial_id
    campaign = {
        "tracker_run_name": trial_id,
        "output_dir": str(output_dir),
        "num_processes": setup.workers,
        "mlflow_parent_run_id": setup.parent_run_id,
        "resume_from_checkpoint": "latest",  # an interrupted trial continues its Train run
    }
    for name, value in campaign.items():
        options[name] = value
        provenance[name] = "campaign"
    config = dataclasses.replace(base.config, values=options, provenance=provenance, env={})
    return dataclasses.replace(base, config=config, output_dir=output_dir)


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune trainable (wrapped with ``tune.with_parameters(run_trial, setup=...)``)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from st_ray.train.trainer import fit
    from st_ray.tune.stopping import is_requested, stop_check

    trial_id = ray.tune.get_context().get_trial_id()
    if is_requested(setup.stop_board, trial_id):
        return  # stopped early before the campaign was interrupted: nothing left to run
    fit(
        trial_plan(setup, config, trial_id),
        callbacks=[TuneReportCallback()],
        storage=setup.train_storage,
        resources_per_worker=setup.resources_per_worker,
        # Built on each Train worker: the trial's run asks the board after every step.
        stop_check=functools.partial(stop_check, setup.stop_board, trial_id),
    )

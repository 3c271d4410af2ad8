"""A campaign end to end: check, cache once, run (or resume) the trials, report.

Layout: ``<storage_path>/<name>/`` holds Tune's experiment state (what ``--resume`` reads),
``train/<trial id>/checkpoint-<step>`` (each trial's Ray Train run), and, once trials finish,
the results table and plot. The same files and the best trial's weights (``best/``) are
written locally to ``<output_dir>/tune/<name>/``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from st_ray.config.redact import redact
from st_ray.placement import parse_cpus
from st_ray.plan import Plan
from st_ray.train import eval_loss
from st_ray.tune import results, space, stopping
from st_ray.tune.callbacks import CampaignCallback
from st_ray.tune.sweep import Problem, Sweep, SweepError
from st_ray.tune.trainable import TrialSetup, run_trial

# The trial's own actor only waits on its Ray Train run; its workers hold the real resources.
TRIAL_DRIVER_CPUS = 0.05
CAMPAIGN_TAG = "st_ray.campaign"


@dataclass
class Campaign:
    plan: Plan
    sweep: Sweep

    @property
    def local_dir(self) -> Path:
        return self.plan.output_dir / "tune" / self.sweep.name

    @property
    def storage_uri(self) -> str:
        root = self.sweep.storage_path or str(self.plan.output_dir / "tune")
        if "://" not in root:  # Tune wants an absolute local path
            root = str(Path(root).expanduser().resolve())
        return f"{root.rstrip('/')}/{self.sweep.name}"

    @property
    def max_steps(self) -> int:
        return int(self.plan.options.get("max_train_steps") or 0)

    @property
    def eval_interval(self) -> int:
        return int(self.plan.options.get("eval_steps_interval") or 0)


def check(plan: Plan, sweep: Sweep) -> None:
    """Campaign-level problems (the sweep against the run config), before Ray starts."""
    problems = []
    if sweep.metric.startswith("eval_loss") and not eval_loss.is_enabled(plan):
        problems.append(
            Problem(
                sweep.source,
                "metric",
                f"'{sweep.metric}' needs an evaluation dataset: add an entry with "
                '"dataset_type": "eval" to the dataset config (or rank on "loss")',
            )
        )
    if not plan.options.get("max_train_steps"):
        problems.append(
            Problem(
                sweep.source,
                "search_space",
                "the run config must set max_train_steps: trials are compared at the same step",
            )
        )
    evals = sweep.metric.startswith("eval_loss")
    if sweep.scheduler == "asha" and evals and not plan.options.get("eval_steps_interval"):
        problems.append(
            Problem(
                sweep.source,
                "scheduler",
                "early stopping on the eval loss needs eval_steps_interval in the run "
                "config (the steps at which trials are compared)",
            )
        )
    if problems:
        raise SweepError(problems)


def storage(campaign: Campaign, *, with_credentials: bool) -> tuple[str, Any]:
    """(path, filesystem) of the campaign folder. Tune pickles its filesystem into the
    experiment state it saves, so Tune gets one without keys (the standard AWS credential
    chain supplies them on the driver); trials get the keys for their checkpoint uploads."""
    uri = campaign.storage_uri
    if not uri.startswith("s3://"):
        return uri, None
    from st_ray import storage as st_storage

    settings = st_storage.S3Settings.from_options(campaign.plan.options)
    if not with_credentials:
        settings = dataclasses.replace(settings, key=None, secret=None, session_token=None)
    filesystem, path = st_storage.pyarrow_filesystem(uri, settings)
    return path, filesystem


def run(
    plan: Plan, sweep: Sweep, *, resume: bool = False, callbacks: Sequence[Any] = ()
) -> Outcome:
    """Run or resume the campaign: the results table and whether every trial ended."""
    import ray.tune

    campaign = Campaign(plan, sweep)
    tune_path, tune_fs = storage(campaign, with_credentials=False)
    train_path, train_fs = storage(campaign, with_credentials=True)
    campaign.local_dir.mkdir(parents=True, exist_ok=True)
    parent = parent_run(campaign)
    board = stopping.board_name(sweep.name)
    stop_board = stopping.start_board(board)  # noqa: F841 -- alive while the campaign runs
    setup = TrialSetup(
        plan=dataclasses.replace(plan, config=dataclasses.replace(plan.config, env={})),
        train_storage=(f"{train_path}/train", train_fs),
        trials_dir=str((campaign.local_dir / "trials").resolve()),
        parent_run_id=parent,
        stop_board=board,
        workers=sweep.workers,
        resources_per_worker=_worker_resources(plan, sweep),
    )
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, setup=setup), {"CPU": TRIAL_DRIVER_CPUS}
    )
    exists = ray.tune.Tuner.can_restore(tune_path, storage_filesystem=tune_fs)
    if resume and not exists:
        raise SweepError(
            [
                Problem(
                    sweep.source, "name", f"no campaign to resume at {redact(campaign.storage_uri)}"
                )
            ]
        )
    if exists and not resume:
        raise SweepError(
            [
                Problem(
                    sweep.source,
                    "name",
                    f"a campaign already exists at {redact(campaign.storage_uri)}; "
                    "continue it with --resume or choose another name",
                )
            ]
        )
    if resume:
        tuner = ray.tune.Tuner.restore(
            tune_path,
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=tune_fs,
        )
        callback = _campaign_callback(tuner)
    else:
        scheduler = space.scheduler(
            sweep, max_steps=campaign.max_steps, eval_interval=campaign.eval_interval, board=board
        )
        callback = CampaignCallback(sweep.metric, scheduler)
        tuner = ray.tune.Tuner(
            trainable,
            param_space=space.param_space(sweep),
            tune_config=ray.tune.TuneConfig(
                metric=sweep.metric,
                mode=sweep.mode,
                scheduler=scheduler,
                num_samples=sweep.num_samples,
                max_concurrent_trials=sweep.max_concurrent_trials,
            ),
            run_config=ray.tune.RunConfig(
                name=sweep.name,
                storage_path=tune_path.rsplit("/", 1)[0],
                storage_filesystem=tune_fs,
                callbacks=[callback, *callbacks],
                verbose=1,
            ),
        )
    callback.on_change = lambda cb: publish(campaign, cb, train_fs, final=False)
    try:
        grid = tuner.fit()
    finally:
        callback.on_change = None
    # Interrupted (Ctrl+C / SIGUSR1): Tune saved its state; trials left are run by --resume.
    ended = [r for r in callback.trials.values() if r["status"] in ("TERMINATED", "ERROR")]
    complete = len(ended) == len(grid)
    rows = publish(campaign, callback, train_fs, final=complete)
    if complete:
        finish_parent(campaign, parent, rows)
    return Outcome(rows, complete)


@dataclass
class Outcome:
    rows: list[dict[str, Any]]  # the results table, best first
    complete: bool  # False when the campaign was interrupted (resume it with --resume)


def publish(
    campaign: Campaign, callback: CampaignCallback, filesystem: Any, *, final: bool
) -> list[dict[str, Any]]:
    """Write the table (and, at the end, the plot and the best weights) locally and to the
    campaign storage."""
    sweep = campaign.sweep
    prefix = "s3://" if campaign.storage_uri.startswith("s3://") else ""
    rows = results.table(
        callback.trials, mode=sweep.mode, max_steps=campaign.max_steps, uri_prefix=prefix
    )
    files = results.write_table(rows, campaign.local_dir, sweep.metric)
    if final:
        files.append(
            results.plot_curves(callback.trials, campaign.local_dir / results.PLOT, sweep.metric)
        )
        best = next((r for r in rows if r["metric"] is not None and r["checkpoint"]), None)
        if best is not None:
            out = campaign.local_dir / results.BEST
            results.export_best(best["checkpoint"].removeprefix("s3://"), filesystem, out)
            (out / "best_trial.json").write_text(json.dumps(best, indent=2, default=str))
    if prefix:
        _upload(files, campaign, filesystem)
    return rows


def _upload(files: list[Path], campaign: Campaign, filesystem: Any) -> None:
    import pyarrow.fs as pafs

    path, _ = storage(campaign, with_credentials=True)
    for file in files:
        pafs.copy_files(
            str(file),
            f"{path}/{file.name}",
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=filesystem,
        )


def parent_run(campaign: Campaign) -> str | None:
    """The campaign's MLflow run (found again by tag on resume); None with report_to none."""
    plan = campaign.plan
    if "none" in (plan.options.get("report_to") or []):
        return None
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(plan.tracking_uri)
    name = str(
        plan.options.get("mlflow_experiment_name")
        or plan.options.get("tracker_project_name")
        or "st_ray"
    )
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        local = plan.tracking_uri.startswith("sqlite:")
        location = (plan.output_dir / "mlartifacts").resolve().as_uri() if local else None
        experiment_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    client = MlflowClient(plan.tracking_uri)
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{CAMPAIGN_TAG}` = '{campaign.sweep.name}'"
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"campaign-{campaign.sweep.name}",
        tags={CAMPAIGN_TAG: campaign.sweep.name},
    )
    sweep = campaign.sweep
    client.log_batch(
        run.info.run_id,
        params=[
            mlflow.entities.Param(k, str(v)[:500])
            for k, v in {
                "metric": sweep.metric,
                "mode": sweep.mode,
                "search": sweep.search,
                "scheduler": sweep.scheduler,
                "num_samples": sweep.num_samples,
                "max_concurrent_trials": sweep.max_concurrent_trials,
                "storage": redact(campaign.storage_uri),
                **{f"space.{d.option}": f"{d.kind} {list(d.values)}" for d in sweep.dimensions},
            }.items()
        ],
    )
    return run.info.run_id


def finish_parent(campaign: Campaign, run_id: str | None, rows: list[dict[str, Any]]) -> None:
    if run_id is None:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(campaign.plan.tracking_uri)
    best = next((r for r in rows if r["metric"] is not None), None)
    if best is not None:
        client.log_metric(run_id, f"best_{campaign.sweep.metric}", float(best["metric"]))
        client.set_tag(run_id, "st_ray.best_trial", best["trial_id"])
    for name in (results.TABLE_CSV, results.TABLE_JSON, results.PLOT):
        path = campaign.local_dir / name
        if path.is_file():
            client.log_artifact(run_id, str(path))
    best_dir = campaign.local_dir / results.BEST
    if best_dir.is_dir():
        client.log_artifacts(run_id, str(best_dir), artifact_path="best")
    client.set_terminated(run_id, "FINISHED")


def _campaign_callback(tuner: Any) -> CampaignCallback:
    """The restored campaign callback (Tune pickles the run config with the tuner; Tuner has
    no public accessor for it, hence the private attribute)."""
    internal = tuner._local_tuner
    for callback in internal.get_run_config().callbacks or []:
        if isinstance(callback, CampaignCallback):
            return callback
    raise RuntimeError("the restored campaign has no st_ray campaign callback")


def _worker_resources(plan: Plan, sweep: Sweep) -> dict[str, float]:
    # cpus_per_worker 'auto' would give each trial's workers whole nodes, so trials could not
    # run side by side: a campaign asks for 1 CPU per worker unless told otherwise.
    cpus = sweep.cpus_per_worker or float(parse_cpus(plan.options["cpus_per_worker"]) or 1)
    return {"CPU": cpus, **({"GPU": float(sweep.gpus_per_worker)} if sweep.gpus_per_worker else {})}

"""MLflow tracking from rank 0: params (secrets redacted), per-step metrics, artifacts.

``report_to: none`` gives a tracker that records nothing. The default store is a local
SQLite store (``<output_dir>/mlflow.db``); ``mlflow_tracking_uri`` points at a tracking server.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from st_ray.plan import Plan

# MLflow caps a param value at 6000 characters; long values (prompt libraries...) are cut.
_MAX_PARAM = 500


class Tracker:
    """Records nothing: for ranks other than 0 and ``report_to: none``."""

    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker(Tracker):
    def __init__(
        self, plan: Plan, run_id: str | None = None, derived: Mapping[str, Any] | None = None
    ) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(plan.tracking_uri)
        options = plan.options
        name = str(
            options.get("mlflow_experiment_name") or options.get("tracker_project_name") or "st_ray"
        )
        if mlflow.get_experiment_by_name(name) is None:
            # A local store keeps artifacts beside the outputs; a server decides for itself.
            local = plan.tracking_uri.startswith("sqlite:")
            location = (plan.output_dir / "mlartifacts").resolve().as_uri() if local else None
            mlflow.create_experiment(name, artifact_location=location)
        mlflow.set_experiment(name)
        if run_id is not None and not _run_exists(mlflow, run_id):
            run_id = None  # resumed against another tracking store: start a fresh run there
        active = mlflow.start_run(
            run_id=run_id,
            run_name=options.get("tracker_run_name"),
            parent_run_id=options.get("mlflow_parent_run_id") if run_id is None else None,
        )
        self.run_id = active.info.run_id
        if run_id is None:  # a resumed run already has its params
            mlflow.log_params(flat_params(plan.to_dict(), derived))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self.mlflow.log_metrics(numbers, step=step)

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        """A file, or a folder (e.g. a full fine-tune's unet/) as a folder of artifacts."""
        if path.is_dir():
            self.mlflow.log_artifacts(str(path), artifact_path=f"{artifact_path}/{path.name}")
        else:
            self.mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)


def _run_exists(mlflow: Any, run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def tracker_for(
    plan: Plan, rank: int, run_id: str | None = None, derived: Mapping[str, Any] | None = None
) -> Tracker:
    """``derived``: the run's derived values (st_ray.train.settings.Derived.as_dict)."""
    if rank != 0 or "none" in (plan.options.get("report_to") or []):
        return Tracker()
    return MlflowTracker(plan, run_id, derived)


def flat_params(
    plan_dict: Mapping[str, Any], derived: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The redacted plan as MLflow params: options by name, datasets as dataset.<id>.<field>,
    the run's derived values as derived.<name> (what ran where an option says otherwise)."""
    params = {"family": plan_dict["family"], "model": plan_dict["model"]}
    params.update({k: v for k, v in plan_dict["options"].items()})
    params.update({f"derived.{k}": v for k, v in (derived or {}).items()})
    for dataset in plan_dict["datasets"]:
        for key, value in dataset.items():
            if value not in (None, "", [], {}):
                params[f"dataset.{dataset['id']}.{key}"] = value
    return {k: str(v)[:_MAX_PARAM] for k, v in params.items()}

"""MLflow tracking from rank 0: params (secrets redacted), per-step metrics, artifacts.

``report_to: none`` gives a tracker that records nothing. The default store is a local
SQLite store (``<output_dir>/mlflow.db``); ``mlflow_tracking_uri`` points at a tracking server.

Per-step metrics never wait on the store: ``log_metrics`` queues them and a background
thread sends what has queued up, about once a second, in one ``log_batch`` call. ``flush`` (before a checkpoint
is reported) and ``finish`` wait until everything queued is recorded, so a run restored from a
checkpoint finds every earlier step in MLflow; a failed send is raised by the next call.
"""

from __future__ import annotations

import queue
import threading
import time
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

    def flush(self) -> None:
        """Return once every metric logged so far is recorded."""

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
        self.sender = MetricSender(mlflow.MlflowClient(plan.tracking_uri), self.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.sender.put(metrics, step)

    def flush(self) -> None:
        self.sender.flush()

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        """A file, or a folder (e.g. a full fine-tune's unet/) as a folder of artifacts."""
        if path.is_dir():
            self.mlflow.log_artifacts(str(path), artifact_path=f"{artifact_path}/{path.name}")
        else:
            self.mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        try:
            self.sender.close()
        finally:
            self.mlflow.end_run(status=status)


class MetricSender:
    """Sends queued metrics to one MLflow run from a daemon thread, in batches.

    A ``log_batch`` call costs milliseconds of Python (the store's SQL, or the HTTP client),
    and on a few cores that time is taken from the step's own threads: the sender gathers
    ``interval_s`` worth of steps into one request rather than sending each step as it comes.
    ``flush`` and ``close`` send at once."""

    MAX_BATCH = 1000  # metrics per log_batch request (MLflow's limit)
    INTERVAL_S = 1.0

    def __init__(self, client: Any, run_id: str, interval_s: float = INTERVAL_S) -> None:
        self.client = client
        self.run_id = run_id
        self.interval_s = interval_s
        self.pending: queue.Queue[tuple[dict[str, float], int, int] | None] = queue.Queue()
        self.now = threading.Event()  # a flush or close is waiting: send without delay
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._send_loop, name="mlflow-metrics", daemon=True)
        self.thread.start()

    def put(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue one step's numeric metrics (timestamped now); returns at once."""
        self._raise_error()
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        if numbers:
            self.pending.put((numbers, step, int(time.time() * 1000)))

    def flush(self) -> None:
        self.now.set()
        self.pending.join()
        self._raise_error()

    def close(self) -> None:
        """Send what is queued, then stop the thread."""
        if self.thread.is_alive():
            self.pending.put(None)
            self.now.set()
            self.thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise RuntimeError(f"MLflow: recording metrics failed: {error}") from error

    def _send_loop(self) -> None:
        from mlflow.entities import Metric

        while True:
            first = self.pending.get()
            if first is not None:
                self.now.wait(self.interval_s)
            # Cleared before draining: a flush that set it after this still finds its steps
            # in the drain, or wakes the next round.
            self.now.clear()
            items = [first]
            while items[-1] is not None and not self.pending.empty():  # all that queued up
                items.append(self.pending.get())
            metrics = [
                Metric(key, value, stamp, step)
                for item in items
                if item is not None
                for numbers, step, stamp in [item]
                for key, value in numbers.items()
            ]
            try:
                for start in range(0, len(metrics), self.MAX_BATCH):
                    self.client.log_batch(
                        self.run_id, metrics=metrics[start : start + self.MAX_BATCH]
                    )
            except BaseException as err:  # noqa: BLE001 - handed to the training thread
                self.error = err
            for _ in items:
                self.pending.task_done()
            if None in items:
                return


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

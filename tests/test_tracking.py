"""MLflow tracking: per-step metrics are sent from a background thread, and nothing logged
before a flush or the end of the run is lost."""

from __future__ import annotations

import json
from pathlib import Path

from st_ray.plan import build_plan
from st_ray.train.tracking import MlflowTracker


def _plan(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "datasets.json").write_text(
        json.dumps([{"id": "d", "type": "local", "instance_data_dir": str(tmp_path / "data")}])
    )
    config = {
        "model_family": "sd1x",
        "pretrained_model_name_or_path": "some/model",
        "data_backend_config": str(tmp_path / "datasets.json"),
        "output_dir": str(tmp_path / "out"),
        "max_train_steps": 1,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    return build_plan(tmp_path / "config.json", [], {})


def test_flush_and_finish_record_every_queued_step(tmp_path: Path) -> None:
    import mlflow

    plan = _plan(tmp_path)
    tracker = MlflowTracker(plan)
    client = mlflow.MlflowClient(plan.tracking_uri)

    def steps(key: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(tracker.run_id, key))

    for step in range(1, 41):
        tracker.log_metrics({"loss": 1.0 / step, "lr": 1e-4, "note": "not a number"}, step)
    tracker.flush()  # what a checkpoint waits for
    assert steps("loss") == list(range(1, 41)) and steps("lr") == list(range(1, 41))
    for step in range(41, 46):
        tracker.log_metrics({"loss": 0.5}, step)
    tracker.finish()
    assert steps("loss") == list(range(1, 46))
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and "note" not in run.data.metrics

"""Run identity through jobs/train.py: which run a job trains, decided before Train starts.

One tiny first run (4 steps) is shared: a finished run exits 0 without starting Train, a
changed rank is refused with names and values, ``resume_from_checkpoint: none`` trains from
step 0 in a new run folder leaving the first run's files byte-identical, and a new learning
rate continues the newest run and is noted."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from st_ray import zoo
from st_ray.jobs.train import main
from st_ray.train.run_identity import new_run_name, run_folders
from tests.test_training import _write_config

RUN = "ident"
DATED = rf"{RUN}-\d{{4}}-\d{{2}}-\d{{2}}_\d{{2}}-\d{{2}}-\d{{2}}"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, zoo_root: Path, example_dataset, ray_local):
    root = tmp_path_factory.mktemp("run-identity")
    model = zoo.ensure("sd1x", zoo_root)
    config = _write_config(root, model, example_dataset.images_dir, "sd1x", tracker_run_name=RUN)
    assert main(["--config", str(config)]) == 0
    storage = root / "out" / "ray_runs"
    assert _snapshot(storage / RUN)["latest_checkpoint_result"]["checkpoint_dir_name"] == (
        "checkpoint-4"
    )
    return SimpleNamespace(root=root, config=config, storage=storage)


def _train(first_run, *args: str) -> int:
    return main(["--config", str(first_run.config), *args])


def _snapshot(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def no_training(monkeypatch):
    """Starting Ray Train would fail the test (the driver must decide before it)."""

    def refuse(*args, **kwargs):
        raise AssertionError("Train workers were started")

    monkeypatch.setattr("st_ray.train.trainer.fit", refuse)


def test_finished_run_exits_0_without_starting_workers(first_run, capsys, no_training) -> None:
    before = _digest(first_run.storage)
    assert _train(first_run) == 0
    out = capsys.readouterr().out
    assert (
        f"run '{RUN}' already finished at step 4 ({first_run.storage / RUN / 'checkpoint-4'}); "
        "nothing to train. Set resume_from_checkpoint none, or a new tracker_run_name, to train "
        "again"
    ) in out
    assert "cache summary" not in out  # no work at all
    assert _train(first_run, "--dry-run") == 0  # the plan says so too
    assert "note: nothing left to train: step 4 is the last step" in capsys.readouterr().out
    assert _digest(first_run.storage) == before


def test_changed_rank_is_refused_with_names_and_values(first_run, capsys, no_training) -> None:
    before = _digest(first_run.storage)
    assert _train(first_run, "--lora_rank", "8", "--optimizer", "optimi-lion") == 2
    err = capsys.readouterr().err
    assert f"run '{RUN}' cannot continue from {first_run.storage / RUN / 'checkpoint-4'}" in err
    assert "  lora_rank: 4 -> 8\n" in err
    assert "  optimizer: adamw_bf16 -> optimi-lion\n" in err
    assert "set resume_from_checkpoint none" in err
    assert "Traceback" not in err
    assert _digest(first_run.storage) == before


def test_none_trains_from_step_0_into_a_new_folder(first_run, capsys) -> None:
    before = _digest(first_run.storage / RUN)
    assert _train(first_run, "--resume_from_checkpoint", "none") == 0
    out = capsys.readouterr().out
    (new,) = [p.name for p in first_run.storage.iterdir() if p.name != RUN]
    assert re.fullmatch(DATED, new), new
    assert (
        f"note: run folder {first_run.storage / new}: a fresh run (resume_from_checkpoint none); "
        f"earlier runs of '{RUN}' are left as they are"
    ) in out
    assert "training finished" in out
    # From step 0: every checkpoint of the new run, the first at step 2.
    registered = [
        c["checkpoint_dir_name"] for c in _snapshot(first_run.storage / new)["checkpoint_results"]
    ]
    assert registered == ["checkpoint-2", "checkpoint-4"]
    manifest = json.loads(
        (first_run.storage / new / "checkpoint-2" / "checkpoint_manifest.json").read_text()
    )
    assert manifest["progress"]["global_step"] == 2
    assert _digest(first_run.storage / RUN) == before  # the first run, byte for byte


def test_changed_learning_rate_resumes_and_is_noted(first_run, capsys) -> None:
    newest = run_folders_here(first_run)[-1]
    others = {name: _digest(first_run.storage / name) for name in run_folders_here(first_run)[:-1]}
    args = ("--learning_rate", "0.002", "--max_train_steps", "6")
    assert _train(first_run, *args) == 0
    out = capsys.readouterr().out
    assert f"note: run folder {first_run.storage / newest}: continues " in out
    assert f"{first_run.storage / newest / 'checkpoint-4'} (step 4)" in out
    assert "learning_rate 0.001 -> 0.002" in out and "max_train_steps 4 -> 6" in out
    latest = _snapshot(first_run.storage / newest)["latest_checkpoint_result"]
    assert latest["checkpoint_dir_name"] == "checkpoint-6"
    assert latest["metrics"]["lr"] == pytest.approx(0.002)  # the new rate is the one used
    assert run_folders_here(first_run)[-1] == newest  # no new folder
    assert {name: _digest(first_run.storage / name) for name in others} == others


def test_s3_run_storage_is_read_the_same_way(
    first_run, s3_server, monkeypatch, capsys, no_training
) -> None:
    """The first run's folder (Ray's snapshot and checkpoints) on S3 run storage: the driver
    finds the same checkpoint there, refuses the same change, and dates a fresh run's folder."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket()
    s3_server.upload_folder(first_run.storage / RUN, bucket, f"runs/{RUN}")
    runs = f"s3://{bucket}/runs"
    storage = ("--run_storage_path", runs, "--s3_endpoint_url", s3_server.endpoint_url)
    assert _train(first_run, *storage, "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"run folder {runs}/{RUN}: continues {runs}/{RUN}/checkpoint-4 (step 4)" in out
    assert "nothing left to train: step 4 is the last step" in out
    assert _train(first_run, *storage, "--lora_rank", "8") == 2
    assert "  lora_rank: 4 -> 8\n" in capsys.readouterr().err
    assert _train(first_run, *storage, "--resume_from_checkpoint", "", "--dry-run") == 0
    assert re.search(rf"run folder {runs}/{DATED}: a fresh run", capsys.readouterr().out)


def run_folders_here(first_run) -> list[str]:
    from fsspec.implementations.local import LocalFileSystem

    return run_folders(LocalFileSystem(), str(first_run.storage), RUN)


def test_run_folder_names_follow_ray_dated_names(tmp_path: Path) -> None:
    from fsspec.implementations.local import LocalFileSystem

    now = datetime(2026, 1, 2, 3, 4, 5)
    assert new_run_name("r", [], now) == "r"  # no run of that name yet: the name itself
    assert new_run_name("r", ["r"], now) == "r-2026-01-02_03-04-05"
    assert new_run_name("r", ["r", "r-2026-01-02_03-04-05"], now) == "r-2026-01-02_03-04-05-2"
    for name in ("r-2026-01-02_03-04-05-2", "r", "r-2025-12-31_23-59-59", "r-other", "rr"):
        (tmp_path / name).mkdir()
    (tmp_path / "r-2026-01-02_03-04-05").mkdir()
    assert run_folders(LocalFileSystem(), str(tmp_path), "r") == [
        "r",
        "r-2025-12-31_23-59-59",
        "r-2026-01-02_03-04-05",
        "r-2026-01-02_03-04-05-2",
    ]
    assert run_folders(LocalFileSystem(), str(tmp_path / "absent"), "r") == []

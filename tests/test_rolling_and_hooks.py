"""Rolling checkpoints, and a real (in-process, world size 1) run with webhooks, a
post_checkpoint_script and the disk guard: what a user's automation sees."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from st_ray import zoo
from st_ray.config.errors import ConfigError
from st_ray.notify.disk_guard import DiskSpaceLow
from st_ray.plan import build_plan
from st_ray.train import rolling
from st_ray.train.run_identity import newest_of_both
from st_ray.train.trainer import fit_in_process
from tests.notify_servers import dead_url, receiver
from tests.test_training import _write_config, sd1x_setup  # noqa: F401 (its caches fixture)

MANIFEST = "checkpoint_manifest.json"


def _checkpoint(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"w" * step)
    (folder / "sub").mkdir()
    (folder / "sub" / "part.txt").write_text(str(step))
    (folder / MANIFEST).write_text(json.dumps({"progress": {"global_step": step}}))
    return folder


def test_rolling_series_keeps_its_own_limit(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint-4").mkdir()  # Ray's series: never touched by the rolling one
    series = rolling.RollingSeries(pafs.LocalFileSystem(), str(run), every=3, limit=2)
    for step in (3, 6, 9):
        saved = series.save(_checkpoint(tmp_path / f"staging-{step}", step), step)
        assert saved == f"{run}/rolling-checkpoint-{step}"
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint-4",
        "rolling-checkpoint-6",
        "rolling-checkpoint-9",
    ]
    assert (run / "rolling-checkpoint-9" / "sub" / "part.txt").read_text() == "9"
    # An interrupted write (no manifest) is never resumed from.
    (run / "rolling-checkpoint-12").mkdir()
    fs = pafs.LocalFileSystem()
    assert [f.step for f in rolling.complete(fs, str(run))] == [6, 9]
    assert rolling.pick_newer(fs, str(run), 4).step == 9
    assert rolling.pick_newer(fs, str(run), 10) is None
    assert rolling.pick_newer(fs, str(run), None).step == 9
    assert rolling.is_due(6, 3) and not rolling.is_due(7, 3) and not rolling.is_due(6, 0)
    assert rolling.step_of("checkpoint-40") == 40 and rolling.step_of("rolling-checkpoint-5") == 5


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _plan(config: Path, out: Path, *extra: str, env: dict[str, str] | None = None):
    return build_plan(config, ["--output_dir", str(out), *extra], env or {})


def test_bad_values_are_refused_at_dry_run(tmp_path: Path, zoo_root, example_dataset) -> None:
    model = zoo.ensure("sd1x", zoo_root)
    config = _write_config(tmp_path, model, example_dataset.images_dir, "sd1x")
    with pytest.raises(ConfigError) as err:
        _plan(
            config,
            tmp_path / "out",
            "--webhook_config",
            '{"webhook_type": "raw", "callback_url": "https://h/SECRET-TOKEN", "level": 1}',
            "--post_checkpoint_script",
            "run.sh {checkpoint}",
            "--disk_low_threshold",
            "lots",
            "--disk_low_action",
            "script",
        )
    text = err.value.render()
    assert "webhook_config: target 0: unknown field(s) level" in text
    assert "post_checkpoint_script: the command unknown placeholder(s) {checkpoint}" in text
    assert "disk_low_threshold: 'lots' is not a size" in text
    assert "disk_low_action: 'script' needs disk_low_script" in text
    assert "SECRET-TOKEN" not in text
    with pytest.raises(ConfigError) as err:
        _plan(config, tmp_path / "out", "--checkpointing_rolling_steps", "0")
    assert "checkpointing_rolling_steps: 0 is below the minimum 1" in err.value.render()


def test_run_notifies_hooks_and_keeps_rolling_checkpoints(
    sd1x_setup,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, _, config = sd1x_setup
    calls = tmp_path / "hook-calls.txt"
    hook = _script(
        tmp_path / "hook.sh",
        f'echo "$1 $2 $(cat "$1/{MANIFEST}" | wc -c)" >> "{calls}"\necho checked "$2"\n',
    )
    ckpt = tmp_path / "ckpt"
    with receiver() as raw:
        webhooks = [
            {"webhook_type": "raw", "callback_url": raw.url},
            {"webhook_type": "raw", "callback_url": dead_url()},  # never slows or stops it
        ]
        plan = _plan(
            config,
            tmp_path / "out",
            "--webhook_config",
            json.dumps(webhooks),
            "--webhook_reporting_interval",
            "3600",
            "--post_checkpoint_script",
            f"{hook} {{local_checkpoint_path}} {{global_step}}",
            "--checkpointing_rolling_steps",
            "1",
            "--checkpoints_rolling_total_limit",
            "2",
            "--disk_low_threshold",
            "1K",
            env={"SIMPLETUNER_JOB_ID": "job-42"},  # the job's environment
        )
        progress, reported = fit_in_process(plan, ckpt)
    assert progress.global_step == 4
    # Regular series at 2 and 4 (checkpoint_step_interval 2), rolling at 1 and 3.
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
        "rolling-checkpoint-1",
        "rolling-checkpoint-3",
    ]
    manifest = json.loads((ckpt / "rolling-checkpoint-3" / MANIFEST).read_text())
    assert manifest["progress"]["global_step"] == 3
    # The hook ran for every checkpoint of both series, on the saved folder, in order.
    rows = [line.split() for line in calls.read_text().splitlines()]
    assert [(Path(r[0]).name, r[1]) for r in rows] == [
        ("rolling-checkpoint-1", "1"),
        ("checkpoint-2", "2"),
        ("rolling-checkpoint-3", "3"),
        ("checkpoint-4", "4"),
    ]
    assert all(int(r[2]) > 0 for r in rows)  # the folder was complete when the hook ran
    bodies = raw.bodies()
    types = [b["type"] for b in bodies]
    assert types[0] == "training.started" and types[-1] == "training.finished"
    assert {b["job_id"] for b in bodies} == {"job-42"}
    saved = [
        (b["data"]["series"], b["data"]["global_step"]) for b in bodies if "series" in b["data"]
    ]
    assert saved == [
        ("rolling checkpoint", 1),
        ("checkpoint", 2),
        ("rolling checkpoint", 3),
        ("checkpoint", 4),
    ]
    assert types.count("training.progress") == 1  # the first step, then once an hour
    # The webhook URLs are secrets: not in the saved checkpoint or the MLflow params.
    for folder in ckpt.iterdir():
        assert "127.0.0.1" not in (folder / MANIFEST).read_text()
    import mlflow

    mlflow.set_tracking_uri(plan.tracking_uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.params["webhook_config"] == "***REDACTED***"
    assert "127.0.0.1" not in json.dumps(run.data.params)

    # Resume picks the newest of either series; here the regular checkpoint-4.
    assert newest_of_both(plan, str(ckpt), "checkpoint-4") == "checkpoint-4"
    assert newest_of_both(plan, str(ckpt), "checkpoint-2") == "rolling-checkpoint-3"
    assert newest_of_both(plan, str(tmp_path / "empty"), None) is None

    # The disk guard: a threshold above the free space stops the resumed run before it writes
    # step 4, reports the error to the webhook, and leaves the last good checkpoint intact.
    ckpt2 = tmp_path / "ckpt2"
    with receiver() as raw:
        plan = _plan(
            config,
            tmp_path / "out2",
            "--webhook_config",
            json.dumps({"webhook_type": "raw", "callback_url": raw.url}),
            "--disk_low_threshold",
            "1P",
        )
        with pytest.raises(DiskSpaceLow) as err:
            fit_in_process(plan, ckpt2, resume_from=ckpt / "checkpoint-2")
        bodies = raw.bodies()
    assert "training stopped before saving the checkpoint at step 4" in str(err.value)
    assert not (ckpt2 / "checkpoint-4").exists()
    assert json.loads((ckpt / "checkpoint-2" / MANIFEST).read_text())["files"]
    assert bodies[-1]["type"] == "training.error" and "DiskSpaceLow" in bodies[-1]["message"]

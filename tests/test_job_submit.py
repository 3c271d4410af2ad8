"""``ray job submit`` as users type it, against a real Ray head this test starts
(``ray start --head`` on loopback, in a process group of its own; see tests/ray_processes.py):
a caching job, a training job stopped with ``ray job stop`` after its first checkpoint, and a
second submission that resumes from that run's latest checkpoint and finishes."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from st_ray import zoo
from tests.ray_processes import BIN, REPO, shell_ray_head
from tests.test_training import _write_config

pytestmark = pytest.mark.slow

RUN = "job-run"
README_HEADING = "### A Ray head on this machine, with token authentication"


def readme_job_lines() -> list[str]:
    """The shell lines of the README's job section, comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split(README_HEADING, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def _ray_job(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), "job", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _status(env: dict[str, str], job: str) -> str:
    """PENDING / RUNNING / STOPPED / SUCCEEDED / FAILED, from ``ray job status``."""
    out = _ray_job(env, "status", job).stdout
    found = re.findall(r"Status for job '[^']+': (\w+)", out)
    if found:
        return found[-1]
    for word, status in (
        ("was stopped", "STOPPED"),
        ("succeeded", "SUCCEEDED"),
        ("failed", "FAILED"),
    ):
        if f"'{job}' {word}" in out:
            return status
    return out


def _registered(run_dir: Path) -> list[int]:
    """Steps of the checkpoints Ray Train's controller has registered for the run."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return []
    return sorted(
        int(c["checkpoint_dir_name"].removeprefix("checkpoint-"))
        for c in snapshot["checkpoint_results"]
    )


def test_job_submit_caches_trains_stops_and_resumes(
    tmp_path: Path, zoo_root: Path, example_dataset
) -> None:
    model = zoo.ensure("sd2x", zoo_root)
    config = _write_config(
        tmp_path, model, example_dataset.images_dir, "sd2x", tracker_run_name=RUN
    )
    out = tmp_path / "out"
    run_dir = out / "ray_runs" / RUN

    # The README's lines in a fresh shell: ~/.ray/auth_token exists, RAY_AUTH_MODE unset.
    lines = readme_job_lines()
    submits = [line for line in lines if line.startswith("ray job submit")]
    assert [s.split("python ")[1].split()[0] for s in submits] == ["jobs/cache.py", "jobs/train.py"]
    with shell_ray_head([line for line in lines if line not in submits]) as (url, env):
        assert "RAY_AUTH_TOKEN" not in env and env["RAY_AUTH_MODE"] == "token"
        gcs_port = None
        # 1. The caching job, exactly as the README writes it (its config path is a placeholder).
        cache = subprocess.run(
            ["bash", "-c", submits[0].replace("config/my-run/config.json", str(config))],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert cache.returncode == 0, cache.stdout[-3000:] + cache.stderr[-3000:]
        assert "succeeded" in cache.stdout + cache.stderr
        # The job joined this head (RAY_ADDRESS from the job supervisor), it did not start
        # a Ray of its own: one node, the head's 2 CPUs.
        joined = re.search(r"Ray cluster 127\.0\.0\.1:(\d+): 1 node, 2 CPUs", cache.stdout)
        assert joined, cache.stdout[-3000:]
        gcs_port = joined.group(1)
        assert re.search(r"photos\s+19\s+0\s+15\s", cache.stdout)  # seen, reused, encoded
        assert "17 distinct captions, 0 reused, 17 encoded" in cache.stdout
        assert (tmp_path / "cache" / "sd2x" / "vae" / "manifest.json").is_file()

        # 2. A long training job, submitted with the runtime env file that ships in clusters/;
        #    stopped once a checkpoint is registered.
        train = ["--", "python", "jobs/train.py", "--config", str(config)]
        runtime = ["--runtime-env", "clusters/runtime-env.yaml"]
        first = _ray_job(
            env, "submit", "--no-wait", "--submission-id", "train-1", *runtime, *train,
            "--max_train_steps", "500",
        )  # fmt: skip
        assert first.returncode == 0, first.stderr[-3000:]
        deadline = time.monotonic() + 240
        while not _registered(run_dir):
            assert _status(env, "train-1") in ("PENDING", "RUNNING"), _ray_job(
                env, "logs", "train-1"
            ).stdout[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.5)
        stop = _ray_job(env, "stop", "train-1")
        assert stop.returncode == 0, stop.stderr[-3000:]
        assert _status(env, "train-1") == "STOPPED"
        logs = _ray_job(env, "logs", "train-1").stdout
        assert re.search(r"\bstep 1/500 ", logs), logs[-3000:]  # progress in the job log
        assert "training finished" not in logs
        latest = _registered(run_dir)[-1]
        assert 2 <= latest < 500 and latest % 2 == 0

        # 3. Submitted again: Ray Train finds the run's latest checkpoint in its storage.
        total = latest + 2
        second = _ray_job(
            env, "submit", "--submission-id", "train-2", *runtime, *train,
            "--max_train_steps", str(total),
        )  # fmt: skip
        logs = second.stdout
        assert second.returncode == 0 and _status(env, "train-2") == "SUCCEEDED", logs[-4000:]
        assert f"Ray cluster 127.0.0.1:{gcs_port}: 1 node" in logs
        assert f"resuming from checkpoint {run_dir}/checkpoint-{latest}" in logs
        # The driver chose that run before Train started, and named what changed.
        assert f"note: run folder {run_dir}: continues {run_dir}/checkpoint-{latest}" in logs
        assert f"max_train_steps 500 -> {total}" in logs
        steps = [int(s) for s in re.findall(rf"\bstep (\d+)/{total} ", logs)]
        # (`ray job submit` may stream a log line twice; the steps are what matters)
        assert sorted(set(steps)) == [latest + 1, latest + 2], logs[-4000:]
        assert "training finished" in logs

    final = json.loads((run_dir / f"checkpoint-{total}" / "checkpoint_manifest.json").read_text())
    assert final["progress"]["global_step"] == total
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    # One MLflow run continued across the two jobs: every step logged, none up to the
    # checkpoint logged twice (the second job did not start over). The first job may have
    # logged steps past its last registered checkpoint before it stopped.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert set(range(1, total + 1)) <= set(logged)
    assert all(logged.count(step) == 1 for step in range(1, latest + 1))

"""Joining a Ray cluster when the address on record is stale: a ``ray start`` head that has
died leaves its address in ``<RAY_TMPDIR>/ray/ray_current_cluster``. Every Ray here runs under
a private RAY_TMPDIR, so no other Ray on the machine is seen or touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.ray_processes import end_leftovers, free_port, isolated_env, private_ray_tmp

REPO = Path(__file__).resolve().parent.parent


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_discovered_dead_cluster_falls_back_to_local_ray_with_warning() -> None:
    with private_ray_tmp() as ray_tmp:
        dead = f"127.0.0.1:{free_port()}"  # nothing listens there
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(dead)
        env = isolated_env(ray_tmp)
        code = (
            "import ray; from st_ray.cluster import connect; connect({}); "
            "print('joined', ray.get_runtime_context().gcs_address); ray.shutdown()"
        )
        try:
            result = _python(code, env)
        finally:
            end_leftovers(ray_tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"warning: the Ray cluster {dead} that `ray start` recorded" in result.stderr
    assert "starting a local Ray instance instead" in result.stderr
    joined = result.stdout.split("joined ")[1].split()[0]
    assert joined != dead
    assert "Failed to connect to GCS" not in result.stderr


def _cache_config(tmp: Path, images: Path) -> Path:
    datasets = [{"id": "local", "type": "local", "instance_data_dir": str(images)}]
    (tmp / "multidatabackend.json").write_text(json.dumps(datasets))
    config = {
        "model_family": "sd1x",
        "output_dir": str(tmp / "out"),
        "data_backend_config": str(tmp / "multidatabackend.json"),
    }
    (tmp / "config.json").write_text(json.dumps(config))
    return tmp / "config.json"


def test_named_dead_address_fails_with_a_clear_message(tmp_path: Path, example_dataset) -> None:
    config = _cache_config(tmp_path, example_dataset.images_dir)
    dead = f"127.0.0.1:{free_port()}"
    with private_ray_tmp() as ray_tmp:
        by_option = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "cache.py"), "--config", str(config)]
            + ["--ray_address", dead],
            env=isolated_env(ray_tmp),
            capture_output=True,
            text=True,
            timeout=120,
        )
        by_env = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "cache.py"), "--config", str(config)],
            env={**isolated_env(ray_tmp), "RAY_ADDRESS": dead},
            capture_output=True,
            text=True,
            timeout=120,
        )
        started_ray = (ray_tmp / "ray").exists()
    assert by_option.returncode == 2, by_option.stderr[-3000:]
    assert f"ray_address: no Ray cluster answers at '{dead}'" in by_option.stderr
    assert by_env.returncode == 2, by_env.stderr[-3000:]
    assert f"RAY_ADDRESS (environment): no Ray cluster answers at '{dead}'" in by_env.stderr
    for result in (by_option, by_env):
        assert "Traceback" not in result.stderr
        assert "Failed to connect to GCS" not in result.stderr
    assert not started_ray  # failed before any Ray process was started

"""``python -m st_ray.bench train`` with tiny numbers, in-process and under Ray Train: every figure
is produced.
No timing assertions: this machine's speed proves nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from st_ray.bench import train
from st_ray.bench.__main__ import main
from st_ray.bench.train_ray import TRAIN_WORKER

pytestmark = pytest.mark.usefixtures("ray_local")


def test_train_benchmark_figures(tmp_path: Path, zoo_root: Path) -> None:
    result = train.run_benchmark(
        tmp_path, steps=4, warmup=1, batch_size=1, zoo_root=zoo_root, ray_repeats=1
    )
    for key in (
        "st_ray_step_time_median_s",
        "st_ray_step_interval_median_s",
        "bare_step_time_median_s",
        "ratio_st_ray_vs_bare",
        "ratio_st_ray_interval_vs_bare",
        "time_to_first_step_s",
        "data_wait_fraction",
        "data_wait_fraction_median",
        "data_wait_median_s",
    ):
        assert result[key] > 0, key
    # Every step reported, one epoch of 4 x 1 images, the cached shapes of a 64 px bucket.
    assert len(result["st_ray_step_times_s"]) == len(result["bare_step_times_s"]) == 4
    assert len(result["st_ray_intervals_s"]) == 3
    assert result["images"] == 4 and result["latent_shape"] == [4, 8, 8]
    # The first report comes after step 1, and the data wait is a part of each step.
    assert result["time_to_first_step_s"] > result["first_step_time_s"]
    assert 0 < result["data_wait_fraction"] < 1
    json.dumps(result)  # what --json saves
    report = train.format_report(result)
    assert "ratio st_ray/bare step time (median):" in report
    assert "ratio st_ray/bare step time, report interval (median):" in report
    assert "data-wait fraction (sum data_wait_s / sum step_time_s, steady state):" in report
    assert "time to first step" in report
    # The real path: fit() under Ray Train with default options on the 2-CPU test instance:
    # cpus_per_worker auto gives the one worker both CPUs, and its torch uses 2 threads.
    assert result["ray_train_cpus_per_worker"] == result["ray_train_torch_threads"] == 2
    assert len(result["ray_train_step_times_s"]) == len(result["bare_same_threads_step_times_s"])
    assert len(result["ray_train_step_times_s"]) == 4 and len(result["ray_train_intervals_s"]) == 3
    assert result["ratio_ray_train_vs_bare"] > 0 and result["ratio_ray_train_interval_vs_bare"] > 0
    assert "ratio Ray Train/bare step time (median interval between steps):" in report
    # The split of that gap: the bare loop also ran inside a Ray Train worker of the same size.
    assert len(result["bare_in_ray_train_step_times_s"]) == 4
    assert result["ratio_bare_in_ray_train_vs_bare"] > 0
    assert result["ratio_ray_train_vs_bare_in_ray_train"] > 0
    assert "of which Ray itself (bare in a Train worker / bare alone):" in report
    # What each Ray process spent over the steady steps: the Train worker did the work.
    assert result["ray_steady_cpu_s"][TRAIN_WORKER] > 0
    assert result["ray_steady_other_cpu_s"] >= 0 and "Ray's other processes" in report


def test_cli_checks_steps_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--steps must exceed --warmup"):
        main(["train", "--steps", "3", "--warmup", "2", "--workdir", str(tmp_path)])
    assert not any(tmp_path.iterdir())

"""bench train's figures of Ray's processes (labels, CPU windows) and of repeated runs (pure)."""

from __future__ import annotations

import pytest

from st_ray.bench.process_cpu import process_label, window_cpu
from st_ray.bench.train_ray import TRAIN_WORKER, combine_repeats


@pytest.mark.parametrize(
    ("name", "cmdline", "label"),
    [
        ("ray::TrainCont", ["ray::TrainController.run"], "ray::TrainController"),
        ("ray::IDLE", ["ray::IDLE", ""], "ray::IDLE"),
        (
            "python",
            ["/v/bin/python", "-u", "/v/ray/_private/log_monitor.py", "--x"],
            "log_monitor.py",
        ),
        ("raylet", ["/v/ray/core/src/ray/raylet/raylet", "--node=1"], "raylet"),
        ("gcs_server", [], "gcs_server"),
    ],
)
def test_process_labels(name: str, cmdline: list[str], label: str) -> None:
    assert process_label(name, cmdline) == label


def test_window_counts_each_process_between_the_samples_around_it() -> None:
    samples = [
        (0.0, {1: ("raylet", 1.0), 2: ("ray::IDLE", 0.5)}),
        (1.0, {1: ("raylet", 1.5), 2: ("ray::RayTrainWorker", 1.0)}),
        (2.0, {1: ("raylet", 1.75), 2: ("ray::RayTrainWorker", 2.5), 3: ("ray::IDLE", 0.25)}),
        (3.0, {1: ("raylet", 2.0), 3: ("ray::IDLE", 0.5)}),  # 2 ended
        (4.0, {1: ("raylet", 9.0)}),
    ]
    got = window_cpu(samples, 1.0, 3.0)
    # raylet 1.5 -> 2.0; the worker up to its last sample (2.5 - 1.0), under its latest label;
    # the process born inside the window from 0.
    assert got == {"raylet": 0.5, "ray::RayTrainWorker": 1.5, "ray::IDLE": 0.5}
    assert window_cpu(samples, 0.5, 1.5) == {
        "raylet": 0.75,
        "ray::RayTrainWorker": 2.0,
        "ray::IDLE": 0.25,
    }
    assert window_cpu([], 0, 1) == {}


def test_repeats_combine_into_medians_and_ranges() -> None:
    def repeat(ratio: float, raylet: float) -> dict:
        return {
            "ratio_ray_train_vs_bare": ratio,
            "ratio_ray_train_interval_vs_bare": ratio,
            "ratio_ray_train_vs_bare_in_ray_train": 1.0,
            "ratio_bare_in_ray_train_vs_bare": ratio,
            "ray_train_torch_threads": 2,
            "ray_steady_cpu_s": {"raylet": raylet, TRAIN_WORKER: 4.0},
            "ray_train_step_times_s": [ratio],
        }

    got = combine_repeats([repeat(1.3, 0.5), repeat(1.0, 0.25), repeat(1.1, 1.0)])
    assert got["ratio_ray_train_vs_bare"] == 1.1
    assert got["ratio_ray_train_vs_bare_spread"] == [1.0, 1.3]
    assert got["ray_steady_cpu_s"] == {TRAIN_WORKER: 4.0, "raylet": 0.5}
    assert got["ray_train_torch_threads"] == 2 and got["ray_train_step_times_s"] == [1.3]
    assert len(got["ray_train_repeats"]) == 3

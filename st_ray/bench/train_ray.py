"""``bench train``'s real path: st_ray's ``fit`` under Ray Train (a ``TorchTrainer``, 1 worker,
default options) against the bare loop (st_ray.bench.bare), alone in the benchmark's process
and inside a Ray Train worker of the same size.

The three figures split the gap: bare in a Train worker / bare alone is what Ray itself costs
(its processes on the same CPUs, the worker's environment); st_ray under Ray Train / bare in a
Train worker is what st_ray adds on top (data loading, scheduler, clipping, bookkeeping).
The runs are in other processes, so they cannot be interleaved: they run one after the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from st_ray.bench.bare import CachedShapes, run_bare
from st_ray.plan import Plan


@dataclass
class RayTrainRun:
    """``fit(plan)`` under Ray Train, timed from the worker's own MLflow records."""

    step_times_s: list[float]  # the worker's step_time_s, by step
    data_wait_s: list[float]
    intervals_s: list[float]  # step k-1 -> step k MLflow timestamps, k = 2..N
    torch_threads: int  # what the worker reported
    cpus_per_worker: int
    cpus_reason: str
    wall_s: float  # fit() call -> return: Ray Train start-up, steps, checkpoint, export


def run_ray_train(plan: Plan, stdout: TextIO | None = None) -> RayTrainRun:
    """``fit(plan)`` on the connected Ray cluster; the worker's progress lines, forwarded to
    this process, go to ``stdout`` (None: this process's)."""
    import mlflow

    from st_ray.placement import cluster_nodes, train_worker_cpus
    from st_ray.train.trainer import _use_gpu, fit

    chosen = train_worker_cpus(plan.options, _use_gpu(plan.options["use_gpu"]), cluster_nodes())
    with contextlib.redirect_stdout(stdout) if stdout else contextlib.nullcontext():
        start = time.perf_counter()
        result = fit(plan)
        wall = time.perf_counter() - start
    client = mlflow.MlflowClient(plan.tracking_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])

    def history(key: str) -> list[Any]:
        return sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)

    stamps = [m.timestamp / 1000 for m in history("loss")]
    return RayTrainRun(
        step_times_s=[m.value for m in history("step_time_s")],
        data_wait_s=[m.value for m in history("data_wait_s")],
        intervals_s=[b - a for a, b in zip(stamps, stamps[1:], strict=False)],
        torch_threads=int(result.metrics["torch_threads"]),
        cpus_per_worker=chosen.cpus,
        cpus_reason=chosen.reason,
        wall_s=wall,
    )


def run_ray_bare(plan: Plan, shapes: CachedShapes, steps: int, storage: Path) -> list[float]:
    """``steps`` bare steps inside one Ray Train worker with the resources ``fit`` would give
    it (``cpus_per_worker`` resolved the same way) and its torch threads set as st_ray's
    worker sets them; returns the step times. Ray Train's run folder goes to ``storage``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from st_ray.placement import cluster_nodes, train_worker_resources
    from st_ray.train.trainer import _use_gpu

    use_gpu = _use_gpu(plan.options["use_gpu"])
    shipped = dataclasses.replace(plan, config=dataclasses.replace(plan.config, env={}))
    trainer = TorchTrainer(
        _bare_worker,
        train_loop_config={
            "plan": shipped,
            "shapes": shapes,
            "steps": steps,
            "out": str(storage / "bare-step-times.json"),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=1,
            use_gpu=use_gpu,
            resources_per_worker=train_worker_resources(plan.options, use_gpu, cluster_nodes()),
        ),
        run_config=ray.train.RunConfig(name="bare", storage_path=str(storage)),
    )
    # Ray Train keeps the metrics of checkpoint reports only: the times come back in a file
    # (one node: the worker runs beside this process).
    out = storage / "bare-step-times.json"
    storage.mkdir(parents=True, exist_ok=True)
    trainer.fit()
    return json.loads(out.read_text())


def _bare_worker(config: dict[str, Any]) -> None:
    from st_ray.device import use_worker_cpus

    use_worker_cpus()  # what train_worker does first
    times = run_bare(config["plan"], config["shapes"], config["steps"])
    Path(config["out"]).write_text(json.dumps(times))


def ray_train_figures(
    run: RayTrainRun, bare: list[float], bare_in_ray: list[float], warmup: int
) -> dict[str, Any]:
    steps = run.step_times_s[warmup:]
    intervals = run.intervals_s[max(warmup - 1, 0) :]
    bare_median = statistics.median(bare[warmup:])
    in_ray_median = statistics.median(bare_in_ray[warmup:])
    return {
        "ray_train_cpus_per_worker": run.cpus_per_worker,
        "ray_train_cpus_reason": run.cpus_reason,
        "ray_train_torch_threads": run.torch_threads,
        "ray_train_wall_s": run.wall_s,
        "ray_train_step_time_median_s": statistics.median(steps),
        "ray_train_step_interval_median_s": statistics.median(intervals),
        "ray_train_data_wait_median_s": statistics.median(run.data_wait_s[warmup:]),
        "bare_same_threads_step_time_median_s": bare_median,
        "bare_in_ray_train_step_time_median_s": in_ray_median,
        "ratio_ray_train_vs_bare": statistics.median(steps) / bare_median,
        "ratio_ray_train_interval_vs_bare": statistics.median(intervals) / bare_median,
        "ratio_ray_train_vs_bare_in_ray_train": statistics.median(intervals) / in_ray_median,
        "ratio_bare_in_ray_train_vs_bare": in_ray_median / bare_median,
        "ray_train_step_times_s": run.step_times_s,
        "ray_train_intervals_s": run.intervals_s,
        "bare_same_threads_step_times_s": bare,
        "bare_in_ray_train_step_times_s": bare_in_ray,
    }


def ray_train_lines(r: dict[str, Any]) -> list[str]:
    first, last = r["warmup"] + 1, r["steps"]
    threads = r["ray_train_torch_threads"]
    rows = [
        (
            "st_ray, Ray Train",
            f"{_ms(r['ray_train_step_time_median_s'])} step_time_s, "
            f"{_ms(r['ray_train_step_interval_median_s'])} between steps (medians)",
        ),
        ("bare, Ray Train worker", _ms(r["bare_in_ray_train_step_time_median_s"])),
        (f"bare, alone, {threads} threads", _ms(r["bare_same_threads_step_time_median_s"])),
        ("st_ray data wait", _ms(r["ray_train_data_wait_median_s"], 2)),
        (
            "worker CPUs",
            f"cpus_per_worker {r['ray_train_cpus_per_worker']} ({r['ray_train_cpus_reason']}), "
            f"torch threads {threads}",
        ),
        ("fit() wall time", f"{r['ray_train_wall_s']:.2f} s (start-up, steps, export)"),
    ]
    width = max(len(name) for name, _ in rows)
    return [
        "",
        f"real path: st_ray.train.trainer.fit (what jobs/train.py runs; TorchTrainer, 1 worker, "
        f"default options), steps {first}-{last}; then the bare loop in a Ray Train worker of "
        "the same size, then alone in this process",
        *(f"{name.ljust(width)}  {value}" for name, value in rows),
        f"ratio Ray Train/bare step time (median step_time_s): {r['ratio_ray_train_vs_bare']:.2f}x",
        f"ratio Ray Train/bare step time (median interval between steps): "
        f"{r['ratio_ray_train_interval_vs_bare']:.2f}x   (goal <= 1.05x)",
        "  of which Ray itself (bare in a Train worker / bare alone): "
        f"{r['ratio_bare_in_ray_train_vs_bare']:.2f}x",
        "  of which st_ray (interval under Ray Train / bare in a Train worker): "
        f"{r['ratio_ray_train_vs_bare_in_ray_train']:.2f}x",
    ]


def _ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1000:.{digits}f} ms"

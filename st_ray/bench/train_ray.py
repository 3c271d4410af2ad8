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
from st_ray.bench.process_cpu import CpuSampler, Sample, window_cpu
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
    stamps: list[float]  # each step's MLflow timestamp (time.time() seconds)
    cpu_samples: list[Sample]  # Ray's processes' CPU times during fit() (process_cpu)

    def steady_cpu(self, warmup: int) -> tuple[float, dict[str, float]]:
        """(wall seconds, CPU seconds per Ray process) from step ``warmup`` to the last step."""
        start, end = self.stamps[max(warmup - 1, 0)], self.stamps[-1]
        return end - start, window_cpu(self.cpu_samples, start, end)


def run_ray_train(plan: Plan, stdout: TextIO | None = None) -> RayTrainRun:
    """``fit(plan)`` on the connected Ray cluster; the worker's progress lines, forwarded to
    this process, go to ``stdout`` (None: this process's)."""
    import mlflow

    from st_ray.placement import cluster_nodes, train_worker_cpus
    from st_ray.train.trainer import _use_gpu, fit

    chosen = train_worker_cpus(plan.options, _use_gpu(plan.options["use_gpu"]), cluster_nodes())
    redirect = contextlib.redirect_stdout(stdout) if stdout else contextlib.nullcontext()
    with redirect, CpuSampler() as cpu:
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
        stamps=stamps,
        cpu_samples=cpu.samples,
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


TRAIN_WORKER = "ray::RayTrainWorker"
RATIOS = (
    "ratio_ray_train_vs_bare",
    "ratio_ray_train_interval_vs_bare",
    "ratio_ray_train_vs_bare_in_ray_train",
    "ratio_bare_in_ray_train_vs_bare",
)


def ray_train_figures(
    run: RayTrainRun, bare: list[float], bare_in_ray: list[float], warmup: int
) -> dict[str, Any]:
    """One repeat's figures: st_ray under Ray Train, the bare loop alone and in a worker."""
    steps = run.step_times_s[warmup:]
    intervals = run.intervals_s[max(warmup - 1, 0) :]
    bare_median = statistics.median(bare[warmup:])
    in_ray_median = statistics.median(bare_in_ray[warmup:])
    window_s, cpu = run.steady_cpu(warmup)
    others = {k: v for k, v in cpu.items() if k != TRAIN_WORKER}
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
        # CPU seconds per Ray process over the steady-state steps (the worker's included).
        "ray_steady_window_s": window_s,
        "ray_steady_cpu_s": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
        "ray_steady_other_cpu_s": sum(others.values()),
        "ray_train_step_times_s": run.step_times_s,
        "ray_train_intervals_s": run.intervals_s,
        "bare_same_threads_step_times_s": bare,
        "bare_in_ray_train_step_times_s": bare_in_ray,
    }


def combine_repeats(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of several interleaved repeats: each scalar figure's median over the
    repeats, the ratios' spread (min, max), the per-step lists of the first repeat, and
    every repeat's own figures."""
    first = repeats[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, float):
            out[key] = statistics.median(r[key] for r in repeats)
        elif not isinstance(value, dict):
            out[key] = value
    for key in RATIOS:
        out[f"{key}_spread"] = [min(r[key] for r in repeats), max(r[key] for r in repeats)]
    labels = {label for r in repeats for label in r["ray_steady_cpu_s"]}
    per_label = {
        label: statistics.median(r["ray_steady_cpu_s"].get(label, 0.0) for r in repeats)
        for label in labels
    }
    out["ray_steady_cpu_s"] = dict(sorted(per_label.items(), key=lambda kv: -kv[1]))
    out["ray_train_repeats"] = repeats
    return out


def ray_train_lines(r: dict[str, Any]) -> list[str]:
    first, last = r["warmup"] + 1, r["steps"]
    threads = r["ray_train_torch_threads"]
    count = len(r.get("ray_train_repeats") or [r])
    window = r["ray_steady_window_s"]
    top = [(k, v) for k, v in r["ray_steady_cpu_s"].items() if k != TRAIN_WORKER and v >= 0.05]
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
        (
            "CPU, steady steps",
            f"{window:.1f} s of steps: Train worker "
            f"{r['ray_steady_cpu_s'].get(TRAIN_WORKER, 0.0):.2f} CPU s, Ray's other "
            f"processes {r['ray_steady_other_cpu_s']:.2f} CPU s "
            f"({r['ray_steady_other_cpu_s'] / max(window, 1e-9):.1%} of one core)",
        ),
        ("  of which", ", ".join(f"{k} {v:.2f}" for k, v in top[:8]) or "-"),
    ]
    width = max(len(name) for name, _ in rows)

    def spread(key: str) -> str:
        low, high = r.get(f"{key}_spread", [r[key], r[key]])
        return f"{r[key]:.2f}x" + (f" (range {low:.2f}-{high:.2f})" if count > 1 else "")

    return [
        "",
        f"real path, {count} interleaved repeat{'s' if count != 1 else ''} (medians over them): "
        "st_ray.train.trainer.fit (what jobs/train.py runs; TorchTrainer, 1 worker, default "
        f"options, on a fresh local Ray instance), steps {first}-{last}; then the bare loop in "
        "a Ray Train worker of the same size; then, Ray stopped, alone in this process",
        *(f"{name.ljust(width)}  {value}" for name, value in rows),
        f"ratio Ray Train/bare step time (median step_time_s): {spread('ratio_ray_train_vs_bare')}",
        "ratio Ray Train/bare step time (median interval between steps): "
        f"{spread('ratio_ray_train_interval_vs_bare')}   (goal <= 1.05x)",
        "  of which Ray itself (bare in a Train worker / bare alone): "
        f"{spread('ratio_bare_in_ray_train_vs_bare')}",
        "  of which st_ray (interval under Ray Train / bare in a Train worker): "
        f"{spread('ratio_ray_train_vs_bare_in_ray_train')}",
    ]


def _ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1000:.{digits}f} ms"

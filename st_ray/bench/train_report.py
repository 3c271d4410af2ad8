"""The training benchmark's report (``st_ray.bench.train``): its figures as a readable table."""

from __future__ import annotations

from typing import Any


def format_report(r: dict[str, Any]) -> str:
    first, last = r["warmup"] + 1, r["steps"]
    setup = (
        f"{r['family']} tiny model + LoRA, batch {r['batch_size']} at {r['resolution']}px "
        f"(latents {tuple(r['latent_shape'])}), {r['images']} images, {r['device']}, "
        f"torch threads {r['torch_threads']} of {r['cpu_count']} CPUs"
    )
    rows = [
        ("setup", setup),
        (
            "st_ray step_time_s",
            f"{_ms(r['st_ray_step_time_median_s'])} median, "
            f"{_ms(r['st_ray_step_time_min_s'])} min (steps {first}-{last})",
        ),
        (
            "st_ray report interval",
            f"{_ms(r['st_ray_step_interval_median_s'])} median (steps {first}-{last - 1})",
        ),
        (
            "bare PyTorch step",
            f"{_ms(r['bare_step_time_median_s'])} median, "
            f"{_ms(r['bare_step_time_min_s'])} min (steps {first}-{last})",
        ),
        (
            "time to first step",
            f"{r['time_to_first_step_s']:.2f} s (the first step itself: "
            f"{r['first_step_time_s']:.2f} s)",
        ),
        (
            "st_ray loop wall time",
            f"{r['st_ray_wall_s']:.2f} s, bare steps not counted (after the last report: "
            f"{r['st_ray_tail_s']:.2f} s)",
        ),
        ("data wait per step", f"{_ms(r['data_wait_median_s'], 2)} median (steps {first}-{last})"),
        (
            "load average (1 min)",
            f"{r['load_average_before']:.2f} before, {r['load_average_after']:.2f} after",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(
        [
            *(f"{name.ljust(width)}  {value}" for name, value in rows),
            "",
            f"timed:  steady state = steps {first}-{last} of {last} ({r['warmup']} warm-up steps"
            " left out).",
            "        st_ray = worker.train() in this process with fit_in_process's context",
            "        (world size 1) and a report callback that timestamps each call.",
            "        step_time_s = the loop's own figure: data loading, forward/backward, grad",
            "        norm/clip, optimizer + LR scheduler step. report interval = time between",
            "        two reports: that plus the per-step MLflow call and progress line; the last",
            "        step's is left out (the loop saves its final checkpoint before reporting).",
            "        bare = the same denoiser, LoRA and optimizer on random tensors already on",
            "        the device: noise + predict + MSE + backward + step + zero_grad; no data,",
            "        checkpoints, scheduler, clipping or tracking. Interleaved: one bare step",
            "        inside each st_ray report callback (not counted in st_ray's figures), so",
            "        both loops run under the same machine load.",
            "        time to first step = from calling the loop to its first report: denoiser",
            "        load, LoRA, optimizer, cache index, MLflow run, lazy imports, step 1.",
            "",
            f"ratio st_ray/bare step time (median): {r['ratio_st_ray_vs_bare']:.2f}x",
            "ratio st_ray/bare step time, report interval (median): "
            f"{r['ratio_st_ray_interval_vs_bare']:.2f}x",
            f"ratio st_ray/bare step time (min): {r['ratio_st_ray_vs_bare_min']:.2f}x",
            f"data-wait fraction (sum data_wait_s / sum step_time_s, steady state): "
            f"{r['data_wait_fraction']:.3f}",
            "data-wait fraction (median of per-step data_wait_s / step_time_s): "
            f"{r['data_wait_fraction_median']:.3f}",
            *(_ray_train_lines(r) if "ray_train_step_time_median_s" in r else []),
        ]
    )


def _ray_train_lines(r: dict[str, Any]) -> list[str]:
    first, last = r["warmup"] + 1, r["steps"]
    threads = r["ray_train_torch_threads"]
    rows = [
        (
            "",
            f"Ray Train (TorchTrainer, 1 worker, default options)   bare loop, {threads} "
            "threads, alone",
        ),
        (
            "step time (median)",
            f"{_ms(r['ray_train_step_time_median_s'])} step_time_s, "
            f"{_ms(r['ray_train_step_interval_median_s'])} between steps   "
            f"{_ms(r['bare_same_threads_step_time_median_s'])}",
        ),
        ("data wait (median)", _ms(r["ray_train_data_wait_median_s"], 2)),
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
        f"real path: st_ray.train.trainer.fit (what jobs/train.py runs), steps {first}-{last}; "
        "then the bare loop alone",
        *(f"{name.ljust(width)}  {value}" for name, value in rows),
        f"ratio Ray Train/bare step time (median step_time_s): {r['ratio_ray_train_vs_bare']:.2f}x",
        f"ratio Ray Train/bare step time (median interval between steps): "
        f"{r['ratio_ray_train_interval_vs_bare']:.2f}x   (goal <= 1.05x)",
    ]


def _ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1000:.{digits}f} ms"

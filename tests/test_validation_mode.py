"""Where validations run (validation_mode) and the back-pressure rule: pure functions."""

from __future__ import annotations

from st_ray.train.validation_mode import Backlog, choose

GPU_WORKER = {"CPU": 4, "GPU": 1}


def test_auto_is_async_only_with_a_spare_gpu() -> None:
    two_gpus = [{"CPU": 16, "GPU": 2}]
    spare = choose({}, two_gpus, GPU_WORKER, num_workers=1)
    assert (spare.mode, spare.num_gpus, spare.num_cpus) == ("async", 1.0, 1.0)
    full = choose({}, two_gpus, GPU_WORKER, num_workers=2)
    assert full.mode == "sync" and "no spare GPU" in full.reason
    cpu_only = choose({}, [{"CPU": 8}], {"CPU": 2}, num_workers=2)
    assert cpu_only.mode == "sync" and "CPU-only" in cpu_only.reason
    half = choose({"validation_actor_gpus": 0.5}, [{"GPU": 1.5}], GPU_WORKER, num_workers=1)
    assert (half.mode, half.num_gpus) == ("async", 0.5)
    assert "asynchronous" in half.describe() and "0.5 GPU" in half.describe()


def test_explicit_modes_and_what_forces_sync() -> None:
    cpu_only = [{"CPU": 8}]
    forced = choose({"validation_mode": "async", "validation_actor_cpus": 0}, cpu_only, {}, 2)
    assert (forced.mode, forced.num_gpus, forced.num_cpus) == ("async", 0.0, 0.0)
    assert "CPU, 0 CPU" in forced.describe()
    spare = [{"GPU": 4}]
    assert choose({"validation_mode": "sync"}, spare, GPU_WORKER, 1).mode == "sync"
    ema = choose({"validation_mode": "async", "use_ema": True}, spare, GPU_WORKER, 1)
    assert ema.mode == "sync" and "use_ema" in ema.reason
    lycoris = {"model_type": "lora", "lora_type": "lycoris"}
    assert choose(lycoris, spare, GPU_WORKER, 1).mode == "sync"


def test_backlog_keeps_at_most_one_pending_and_always_runs_the_final() -> None:
    backlog = Backlog()
    assert backlog.offer(10) == "start"
    backlog.started(10)
    assert backlog.offer(20) == "skip"  # still rendering 10
    assert backlog.offer(30) == "skip"
    assert backlog.skipped == [20, 30]
    assert backlog.offer(40, final=True) == "wait"  # the final waits, never skipped
    backlog.finished()
    assert backlog.offer(40, final=True) == "start"
    backlog.started(40)
    backlog.finished()
    assert backlog.pending is None and backlog.offer(50) == "start"

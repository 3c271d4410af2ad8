"""Device placement in one place: which device a process computes on, and in which dtype."""

from __future__ import annotations

import torch

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device() -> torch.device:
    """The GPU Ray assigned to this process when there is one, else the CPU.

    Ray sets CUDA_VISIBLE_DEVICES for actors and workers that asked for GPUs, so "cuda"
    (device 0 of the visible ones) is always the right GPU.
    """
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """``default`` is bf16 on GPUs that support it and fp32 elsewhere (CPU half math is slow)."""
    if name in _DTYPES:
        return _DTYPES[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def gpus_available() -> int:
    """GPUs in the Ray cluster (0 before Ray is connected)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0


def use_worker_cpus() -> int:
    """Give torch as many intra-op threads as Ray assigned this worker CPUs; returns the
    count. (Ray caps OpenMP through OMP_NUM_THREADS at the same figure; torch is set
    explicitly so its pool matches whatever was imported first.)"""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    if cpus >= 1:
        torch.set_num_threads(int(cpus))
    return torch.get_num_threads()

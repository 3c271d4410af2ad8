"""Gradient checkpointing as SimpleTuner configures it: every block, or every N-th
(gradient_checkpointing_interval), with PyTorch's recomputation or with the blocks' saved
tensors parked in CPU memory (gradient_checkpointing_backend 'unsloth').

diffusers models route each checkpointable block (a UNet's resnets and attention blocks, a DiT's
transformer blocks) through ``_gradient_checkpointing_func``; st_ray hands them one that counts
the calls of the forward pass and checkpoints the calls whose count is a multiple of N (the
first N-1 run plainly), which is SimpleTuner's rule. A forward pre-hook restarts the count, so
every forward pass checkpoints the same blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.utils.checkpoint

BACKENDS = ("torch", "unsloth")


class _CpuOffload:
    """saved_tensors_hooks that keep accelerator tensors saved for backward in CPU memory."""

    @staticmethod
    def pack(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.device | None]:
        if tensor.device.type == "cpu":
            return tensor, None
        return tensor.to("cpu", non_blocking=True), tensor.device

    @staticmethod
    def unpack(packed: tuple[torch.Tensor, torch.device | None]) -> torch.Tensor:
        tensor, device = packed
        return tensor if device is None else tensor.to(device, non_blocking=True)


class IntervalCheckpoint:
    """The ``_gradient_checkpointing_func`` diffusers blocks call: checkpoints every
    ``interval``-th call of a forward pass through ``backend``."""

    def __init__(self, interval: int = 1, backend: str = "torch") -> None:
        if interval < 1:
            raise ValueError(f"gradient_checkpointing_interval must be >= 1, got {interval}")
        if backend not in BACKENDS:
            raise ValueError(
                f"gradient_checkpointing_backend {backend!r} is not one of {', '.join(BACKENDS)}"
            )
        self.interval = interval
        self.backend = backend
        self.calls = 0
        self.checkpointed = 0  # of the last forward pass (tests and logs read it)

    def restart(self, *_: Any) -> None:
        self.calls = 0
        self.checkpointed = 0

    def __call__(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls % self.interval:
            return function(*args, **kwargs)
        self.checkpointed += 1
        if self.backend == "unsloth":
            with torch.autograd.graph.saved_tensors_hooks(_CpuOffload.pack, _CpuOffload.unpack):
                return torch.utils.checkpoint.checkpoint(
                    function, *args, use_reentrant=False, **kwargs
                )
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, **kwargs)


def enable(model: torch.nn.Module, options: Mapping[str, Any]) -> IntervalCheckpoint | None:
    """Turn on ``model``'s gradient checkpointing as gradient_checkpointing,
    gradient_checkpointing_interval and gradient_checkpointing_backend say; returns the
    checkpointing function (None when off)."""
    if not options.get("gradient_checkpointing"):
        return None
    func = IntervalCheckpoint(
        int(options.get("gradient_checkpointing_interval") or 1),
        str(options.get("gradient_checkpointing_backend") or "torch"),
    )
    model.enable_gradient_checkpointing(gradient_checkpointing_func=func)
    model.register_forward_pre_hook(func.restart)
    return func


def option_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for checkpointing options that would change nothing."""
    if values.get("gradient_checkpointing"):
        return []
    found = []
    if values.get("gradient_checkpointing_interval"):
        found.append("gradient_checkpointing_interval")
    if (values.get("gradient_checkpointing_backend") or "torch") != "torch":
        found.append("gradient_checkpointing_backend")
    return [
        (
            key,
            f"{key} applies to gradient checkpointing, which is off: set "
            "gradient_checkpointing: true, or remove it",
        )
        for key in found
    ]

"""Typed views of the options the loop reads, built once per run.

``LoopSettings`` holds what the loop, the optimizer step and the side events read at every
step, coerced once (SimpleTuner spells "off" as 0 or null for most of them). ``Derived`` holds
the values the run computes from its options and the cluster: the learning rate after
``lr_scale``, the schedule that actually runs, the batch and the run's length. The plan's
options stay what was configured; ``Derived`` is what ran where the two differ, and it is
recorded with the run (checkpoint manifests, MLflow params ``derived.*``, the model card).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from st_ray.train.lr_schedules import Schedule, resolve_schedule
from st_ray.train.optimizers import optimizer_spec


@dataclass(frozen=True)
class LoopSettings:
    grad_accumulation: int  # gradient_accumulation_steps: batches per optimizer step
    checkpoint_steps: int  # checkpoint_step_interval (0: only the last step)
    checkpoint_epochs: int  # checkpoint_epoch_interval (0: never at an epoch's end)
    cache_clear_steps: int  # accelerator_cache_clear_interval (0: never)
    max_grad_norm: float  # 0: no clipping (also for optimizers SimpleTuner leaves unclipped)
    clip_by_value: bool  # grad_clip_method 'value' (else the total norm)
    caption_dropout: float  # caption_dropout_probability
    grads_to_none: bool  # set_grads_to_none
    validation: bool  # not validation_disable
    seed: int  # the run's seed (0 when the config gives none)
    seed_per_rank: bool  # seed_for_each_device
    disable_tf32: bool
    release_gradients: bool  # optimizer_release_gradients
    use_ema: bool

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LoopSettings:
        clips = optimizer_spec(options).clip_gradients  # SimpleTuner skips clipping when False
        seed = options.get("seed")
        return cls(
            grad_accumulation=int(options.get("gradient_accumulation_steps") or 1),
            checkpoint_steps=int(options.get("checkpoint_step_interval") or 0),
            checkpoint_epochs=int(options.get("checkpoint_epoch_interval") or 0),
            cache_clear_steps=int(options.get("accelerator_cache_clear_interval") or 0),
            max_grad_norm=float(options.get("max_grad_norm") or 0) if clips else 0.0,
            clip_by_value=options.get("grad_clip_method") == "value",
            caption_dropout=float(options.get("caption_dropout_probability") or 0),
            grads_to_none=bool(options.get("set_grads_to_none", True)),
            validation=not options.get("validation_disable"),
            seed=int(seed) if seed is not None else 0,
            seed_per_rank=bool(options.get("seed_for_each_device", True)),
            disable_tf32=bool(options.get("disable_tf32")),
            release_gradients=bool(options.get("optimizer_release_gradients")),
            use_ema=bool(options.get("use_ema")),
        )

    def rank_seed(self, seed: int, rank: int) -> int:
        """seed_for_each_device gives every rank its own noise stream (the usual choice: ranks
        would otherwise draw identical noise for different images); off, all ranks share one."""
        return seed + 7919 * rank if self.seed_per_rank else seed


@dataclass(frozen=True)
class Derived:
    """What ran, where the options alone do not say it."""

    world_size: int
    schedule: Schedule  # peak learning rate after lr_scale, the schedule that runs
    effective_batch_size: int  # train_batch_size x gradient_accumulation_steps x workers
    steps_per_epoch: int
    total_steps: int
    num_epochs: int

    @property
    def learning_rate(self) -> float:
        return self.schedule.peak_lr

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-ready: for manifests, MLflow params and the model card."""
        return {
            "world_size": self.world_size,
            "learning_rate": self.schedule.peak_lr,
            "lr_scheduler": self.schedule.name,
            "lr_warmup_steps": self.schedule.warmup_steps,
            "effective_batch_size": self.effective_batch_size,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "num_epochs": self.num_epochs,
        }


def derive(options: Mapping[str, Any], *, world_size: int, steps_per_epoch: int) -> Derived:
    """The run's derived values; raises ValueError for a schedule SimpleTuner rejects."""
    schedule = resolve_schedule(
        options,
        world_size=world_size,
        replaced_by_optimizer=optimizer_spec(options).replaces_lr_scheduler,
    )
    total_steps, num_epochs = training_length(options, steps_per_epoch)
    batch = int(options.get("train_batch_size") or 1)
    accumulation = int(options.get("gradient_accumulation_steps") or 1)
    return Derived(
        world_size=world_size,
        schedule=schedule,
        effective_batch_size=batch * accumulation * world_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        num_epochs=num_epochs,
    )


def training_length(options: Mapping[str, Any], steps_per_epoch: int) -> tuple[int, int]:
    """(total optimizer steps, epochs). max_train_steps, when set, decides and the epoch count
    follows from it (SimpleTuner: 0 means "use num_train_epochs")."""
    max_steps = int(options.get("max_train_steps") or 0)
    if max_steps:
        return max_steps, math.ceil(max_steps / max(steps_per_epoch, 1))
    epochs = int(options.get("num_train_epochs") or 0)
    return epochs * steps_per_epoch, epochs


def weight_dtype(options: Mapping[str, Any], device: torch.device) -> torch.dtype:
    """Frozen base weights in the mixed-precision dtype on GPUs; fp32 on CPU (CPU half math
    is slow and partly unsupported). Trainable weights stay fp32 (see step.autocast)."""
    if device.type != "cuda":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        str(options.get("mixed_precision")), torch.float32
    )

"""Learning-rate schedules: the multiplier of each ``lr_scheduler`` at an optimizer step, the
``lr_scale`` rule, and a resumable ``LambdaLR`` built from the options.

Steps count optimizer updates (one ``scheduler.step()`` per optimizer step, whatever the number
of workers). SimpleTuner's schedulers are stepped ``num_processes`` times per update by
Accelerate and get their step counts multiplied by ``num_processes`` to match, which comes to
the same schedule. With W = ``lr_warmup_steps``, T = the run's total optimizer steps and
r = ``lr_end`` / learning rate:

- 'constant': 1. SimpleTuner turns 'constant' with W > 0 into 'constant_with_warmup'
  (``normalize_lr_scheduler_value``); ``build_scheduler`` does the same.
- 'constant_with_warmup': s/W during warmup, then 1 (diffusers).
- 'linear': s/W during warmup, then down to 0 at T (diffusers).
- 'polynomial': s/W during warmup, then r + (1 - r)·(1 - (s - W)/(T - W))^lr_power, reaching r
  (that is, ``lr_end``) at T and staying there (SimpleTuner's own
  ``get_polynomial_decay_schedule_with_warmup``; it requires lr_end < learning rate).
- 'cosine': r + (1 - r)·(1 + cos(π·s/W))/2, no warmup: W is the half-period of a cosine wave
  between the learning rate and ``lr_end`` (what SimpleTuner's ``Cosine`` scheduler computes;
  W = 0 falls back to 1000, as there).
- 'sine': r + (1 - r)·(1 + sin(π·s/W))/2, no warmup: the wave starts half-way and peaks at
  W/2 (SimpleTuner's ``Sine``; it requires W > 0).
- 'cosine_with_restarts': r + (1 - r)·(1 + cos(π·(s mod W)/W))/2, no warmup: cosine decays
  to ``lr_end`` restarting every W steps (the SGDR schedule SimpleTuner's
  ``CosineAnnealingHardRestarts`` describes; SimpleTuner's own instance never leaves the
  learning rate because it is built with ``steps_per_epoch=-1`` and warns it "may not do what
  you expect"). It requires W > 0.

``lr_num_cycles`` reaches none of these: SimpleTuner passes it only to diffusers' generic
schedules, and the choices that end up there (linear, constant, constant_with_warmup) take no
cycles. SimpleTuner also truncates its custom schedules' rates to 1e-9; st_ray does not.

SimpleTuner sources matched: ``simpletuner/helpers/training/custom_schedule.py``
(``get_lr_scheduler``, ``Cosine``, ``Sine``, ``CosineAnnealingHardRestarts``,
``get_polynomial_decay_schedule_with_warmup``), ``simpletuner/helpers/training/trainer.py``
(``lr_scale``) and ``simpletuner/helpers/configuration/cli_utils.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULERS = (
    "linear",
    "sine",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)
# The wave schedules use lr_warmup_steps as their (half-)period instead of warming up.
CYCLIC = ("sine", "cosine", "cosine_with_restarts")
# SimpleTuner's Cosine falls back to this half-period when lr_warmup_steps is 0.
COSINE_DEFAULT_PERIOD = 1000


def lr_multiplier(
    name: str,
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    power: float = 1.0,
    lr_end_ratio: float = 0.0,
) -> float:
    """The factor on the peak learning rate after ``step`` optimizer steps (see the module
    docstring for each schedule). ``lr_end_ratio`` is lr_end / learning rate."""
    r = float(lr_end_ratio)
    if name == "constant":
        return 1.0
    if name in ("constant_with_warmup", "linear", "polynomial") and step < warmup_steps:
        return step / max(1, warmup_steps)
    if name == "constant_with_warmup":
        return 1.0
    if name == "linear":
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    if name == "polynomial":
        if step >= total_steps:
            return r
        remaining = 1.0 - (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return r + (1.0 - r) * remaining**power
    if name == "cosine":
        period = warmup_steps or COSINE_DEFAULT_PERIOD
        return r + (1.0 - r) * (1.0 + math.cos(math.pi * step / period)) / 2
    if name in ("sine", "cosine_with_restarts"):
        if warmup_steps <= 0:
            raise ValueError(_needs_period(name))
        if name == "sine":
            return r + (1.0 - r) * (1.0 + math.sin(math.pi * step / warmup_steps)) / 2
        phase = (step % warmup_steps) / warmup_steps
        return r + (1.0 - r) * (1.0 + math.cos(math.pi * phase)) / 2
    raise ValueError(f"lr_scheduler {name!r} is not one of {', '.join(SCHEDULERS)}")


def _needs_period(name: str) -> str:
    return (
        f"lr_scheduler {name!r} uses lr_warmup_steps as its cycle length (it has no warmup), "
        "so lr_warmup_steps must be greater than 0"
    )


def scaled_learning_rate(options: Mapping[str, Any], world_size: int) -> float:
    """``learning_rate``, times the effective batch (workers × gradient_accumulation_steps ×
    train_batch_size) with ``lr_scale``, or times its square root with ``lr_scale_sqrt`` too.
    ``lr_scale_sqrt`` alone changes nothing, as in SimpleTuner. ``lr_end`` is never scaled."""
    lr = float(options["learning_rate"])
    if not options["lr_scale"]:
        return lr
    factor = (
        int(world_size)
        * int(options["gradient_accumulation_steps"])
        * int(options["train_batch_size"])
    )
    return lr * (math.sqrt(factor) if options["lr_scale_sqrt"] else factor)


def scheduler_name(options: Mapping[str, Any]) -> str:
    """The schedule that runs: 'constant' with warmup steps becomes 'constant_with_warmup'."""
    name = str(options["lr_scheduler"])
    if name == "constant" and int(options["lr_warmup_steps"] or 0) > 0:
        return "constant_with_warmup"
    return name


def check_schedule_options(options: Mapping[str, Any], *, world_size: int) -> None:
    """Raise ValueError for schedule options SimpleTuner rejects, before any step is taken
    (cheap: for the plan check as well as ``build_scheduler``)."""
    name = scheduler_name(options)
    if name not in SCHEDULERS:
        raise ValueError(f"lr_scheduler {name!r} is not one of {', '.join(SCHEDULERS)}")
    if name in ("sine", "cosine_with_restarts") and int(options["lr_warmup_steps"] or 0) <= 0:
        raise ValueError(_needs_period(name))
    if name == "polynomial":
        lr = scaled_learning_rate(options, world_size)
        if not float(options["lr_end"]) < lr:
            raise ValueError(
                f"lr_scheduler 'polynomial' decays to lr_end, which must be smaller than the "
                f"learning rate (lr_end={options['lr_end']}, learning rate={lr:g}"
                f"{' after lr_scale' if options['lr_scale'] else ''})"
            )


class ResumableLambdaLR(LambdaLR):
    """A ``LambdaLR`` whose ``load_state_dict`` also puts the restored step's rates back into
    the optimizer, so the first update after a resume uses them even when the optimizer's own
    state was not restored (its ``param_groups`` hold the rates otherwise).

    The peak rates stay this run's (``base_lrs``, from its options): a run resumed with a new
    ``learning_rate`` continues at the new rate times the schedule's multiplier at the restored
    step. (SimpleTuner applies a new rate on resume for 'constant' only; its other schedules
    silently keep the checkpoint's.)"""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        peaks = list(self.base_lrs)
        super().load_state_dict(state_dict)
        self.base_lrs = peaks
        self._last_lr = self._rates_at(self.last_epoch)
        for group, lr, peak in zip(self.optimizer.param_groups, self._last_lr, peaks, strict=True):
            group["lr"] = lr
            group["initial_lr"] = peak

    def _rates_at(self, step: int) -> list[float]:
        return [
            base * rule(step) for base, rule in zip(self.base_lrs, self.lr_lambdas, strict=True)
        ]


@dataclass(frozen=True)
class Schedule:
    """The schedule a run follows, resolved once from its options (and recorded with the run):
    the peak rate after ``lr_scale``, and 'constant' without warmup when a schedule-free
    optimizer shapes the rate itself (its own warmup included)."""

    name: str
    peak_lr: float
    lr_end: float
    warmup_steps: int
    power: float


def resolve_schedule(
    options: Mapping[str, Any], *, world_size: int, replaced_by_optimizer: bool = False
) -> Schedule:
    """The options' schedule; raises ValueError for what SimpleTuner rejects."""
    peak = scaled_learning_rate(options, world_size)
    end, power = float(options["lr_end"]), float(options["lr_power"])
    if replaced_by_optimizer:
        return Schedule("constant", peak, end, 0, power)
    check_schedule_options(options, world_size=world_size)
    warmup = int(options["lr_warmup_steps"] or 0)
    return Schedule(scheduler_name(options), peak, end, warmup, power)


def schedule_scheduler(
    optimizer: torch.optim.Optimizer, schedule: Schedule, total_steps: int
) -> ResumableLambdaLR:
    """A ``LambdaLR`` following ``schedule`` over ``total_steps`` optimizer steps.

    The optimizer's rates must already be the peak rates (``schedule.peak_lr``); every
    parameter group gets the same multiplier, with r = lr_end / peak rate, so the main group
    ends at ``lr_end`` and a group with its own rate (a text encoder's) keeps its proportion —
    the rule of SimpleTuner's polynomial schedule. Call ``step()`` once after each optimizer
    step; ``state_dict()`` / ``load_state_dict()`` resume at the saved step.
    """
    ratio = schedule.lr_end / schedule.peak_lr if schedule.peak_lr > 0 else 0.0
    total = int(total_steps)

    def multiplier(step: int) -> float:
        return lr_multiplier(
            schedule.name,
            step,
            total_steps=total,
            warmup_steps=schedule.warmup_steps,
            power=schedule.power,
            lr_end_ratio=ratio,
        )

    return ResumableLambdaLR(optimizer, multiplier)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    options: Mapping[str, Any],
    total_steps: int,
    *,
    world_size: int,
) -> ResumableLambdaLR:
    """The ``lr_scheduler`` of the options over ``total_steps`` optimizer steps (see
    ``schedule_scheduler``); ``options`` hold the configured, unscaled ``learning_rate``."""
    schedule = resolve_schedule(options, world_size=world_size)
    return schedule_scheduler(optimizer, schedule, total_steps)

"""Scheduled sampling (rollout) and ReflexFlow: the maths, as SimpleTuner computes it.

Each sample keeps its drawn noise level as the *target* timestep t; with the ramped probability
it gets a rollout offset k (``scheduled_sampling_strategy``), and the model, without gradients,
denoises its own way from t + k down to t (``st_ray.train.rollout``); the training step then
runs on that self-made input against the usual target. ReflexFlow (flow-matching families, on
by default there when scheduled sampling is on) reweights the loss from the exposure bias
(the no-grad prediction on the true input minus the one on the rolled-out input) and adds a
directional anti-drift term. SimpleTuner sources matched:
``simpletuner/helpers/scheduled_sampling/plan.py`` (``build_rollout_schedule``),
``.../rollout.py`` and ``simpletuner/helpers/models/common.py`` (the probability ramp in
``prepare_batch``, the ReflexFlow branch of ``loss``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Settings:
    max_offset: int
    strategy: str
    probability: float
    prob_start: float
    prob_end: float
    ramp_steps: int
    start_step: int
    ramp_shape: str
    reflexflow: bool
    alpha: float
    beta1: float
    beta2: float

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, flow_matching: bool) -> Settings | None:
        """None when scheduled sampling is off (max_step_offset 0)."""

        offset = int(options.get("scheduled_sampling_max_step_offset") or 0)
        if offset <= 0:
            return None
        reflex = options.get("scheduled_sampling_reflexflow")
        probability = float(options.get("scheduled_sampling_probability") or 0.0)
        return cls(
            max_offset=offset,
            strategy=str(options.get("scheduled_sampling_strategy") or "uniform"),
            probability=probability,
            # SimpleTuner reads these as `value or probability`: 0 falls back to it.
            prob_start=float(options.get("scheduled_sampling_prob_start") or probability),
            prob_end=float(options.get("scheduled_sampling_prob_end") or probability),
            ramp_steps=int(options.get("scheduled_sampling_ramp_steps") or 0),
            start_step=int(options.get("scheduled_sampling_start_step") or 0),
            ramp_shape=str(options.get("scheduled_sampling_ramp_shape") or "linear"),
            # Unset: on for flow-matching models (SimpleTuner's _maybe_enable_reflexflow_default).
            reflexflow=flow_matching if reflex is None else bool(reflex) and flow_matching,
            alpha=float(options.get("scheduled_sampling_reflexflow_alpha") or 0.0),
            beta1=float(options.get("scheduled_sampling_reflexflow_beta1") or 0.0),
            beta2=1.0
            if options.get("scheduled_sampling_reflexflow_beta2") is None
            else float(options.get("scheduled_sampling_reflexflow_beta2")),
        )


def rollout_probability(settings: Settings, global_step: int) -> float:
    """The chance a sample is rolled out at ``global_step``: ``probability``, or with
    ``ramp_steps`` a linear / cosine ramp from ``prob_start`` to ``prob_end`` that begins at
    ``start_step`` (``prob_start`` before it)."""
    s = settings
    if s.ramp_steps <= 0:
        return s.probability
    if global_step < s.start_step:
        return s.prob_start
    progress = min(1.0, max(0.0, (global_step - s.start_step) / s.ramp_steps))
    if s.ramp_shape == "cosine":
        progress = 0.5 - 0.5 * math.cos(math.pi * progress)
    return s.prob_start + (s.prob_end - s.prob_start) * progress


def draw_offsets(
    batch: int,
    max_offset: int,
    strategy: str,
    probability: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """(batch,) rollout lengths in timesteps: 0..max_offset drawn by ``strategy`` (uniform;
    biased_early: round(u²·max), mostly short; biased_late: round((1-u²)·max), mostly long),
    zeroed for samples that lose the ``probability`` draw."""
    if probability < 1.0:
        chosen = torch.rand(batch, generator=generator) < probability
    else:
        chosen = torch.ones(batch, dtype=torch.bool)
    if strategy == "uniform":
        offsets = torch.randint(0, max_offset + 1, (batch,), generator=generator)
    elif strategy == "biased_early":
        offsets = torch.round(torch.rand(batch, generator=generator) ** 2 * max_offset).long()
    elif strategy == "biased_late":
        offsets = torch.round((1 - torch.rand(batch, generator=generator) ** 2) * max_offset).long()
    else:
        raise ValueError(f"unknown scheduled_sampling_strategy {strategy!r}")
    return offsets * chosen


def source_timesteps(target: torch.Tensor, offsets: torch.Tensor, num_train_timesteps: int):
    """Where each rollout starts: target + offset, capped at the last timestep."""
    return torch.clamp(target + offsets.to(target.device), max=num_train_timesteps - 1)


def frequency_weight(clean: torch.Tensor, biased: torch.Tensor, alpha: float) -> torch.Tensor:
    """ReflexFlow's frequency compensation: 1 + α·e/‖e‖₁ per element, e = clean - biased (the
    exposure bias, detached; ‖·‖₁ per sample, at least 1e-6). Components the rollout lost
    (clean > biased) weigh more."""
    exposure = (clean - biased).detach().float()
    dims = tuple(range(1, exposure.dim()))
    norm = exposure.abs().sum(dim=dims, keepdim=True).clamp_min(1e-6)
    return 1.0 + alpha * exposure / norm


def anti_drift(pred: torch.Tensor, noisy: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """ReflexFlow's directional term per sample: ‖pred/‖pred‖ - d/‖d‖‖² with d = x_t - x0 (the
    flow direction of the rolled-out input), norms at least 1e-6."""
    b = pred.shape[0]
    target = (noisy.float() - x0.float()).reshape(b, -1)
    flat = pred.float().reshape(b, -1)
    direction = target / target.norm(dim=1, keepdim=True).clamp_min(1e-6)
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return (unit - direction).pow(2).sum(dim=1)


def reflexflow_loss(
    elementwise: torch.Tensor,
    pred: torch.Tensor,
    *,
    clean: torch.Tensor,
    biased: torch.Tensor,
    noisy: torch.Tensor,
    x0: torch.Tensor,
    settings: Settings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the scalar loss, the mean anti-drift term): per sample mean(elementwise · w · β2) +
    β1·anti_drift, averaged over the batch (SimpleTuner's order: weight, β2, then the term)."""
    loss = elementwise.float()
    if settings.alpha != 0.0:
        loss = loss * frequency_weight(clean, biased, settings.alpha)
    loss = loss * settings.beta2
    per_sample = loss.reshape(loss.shape[0], -1).mean(dim=1)
    drift = anti_drift(pred, noisy, x0)
    if settings.beta1 != 0.0:
        per_sample = per_sample + settings.beta1 * drift
    return per_sample.mean(), drift.mean()


def option_problems(
    options: Mapping[str, Any], *, flow_matching: bool, family: str
) -> list[tuple[str, str]]:
    """Why the scheduled sampling options cannot apply to this run: (option, message) pairs."""
    if int(options.get("scheduled_sampling_max_step_offset") or 0) <= 0:
        return []
    if not flow_matching:
        return [
            (
                "scheduled_sampling_max_step_offset",
                f"scheduled sampling on {family} (epsilon / v-prediction) needs SimpleTuner's "
                "skrample solvers for its rollouts, which st_ray does not implement; it is "
                "supported on flow-matching families",
            )
        ]
    return []


def option_notes(options: Mapping[str, Any], *, flow_matching: bool) -> list[str]:
    """What the user should know about the settings that run."""
    if not flow_matching or int(options.get("scheduled_sampling_max_step_offset") or 0) <= 0:
        return []
    notes = []
    sampler, order = (
        options.get("scheduled_sampling_sampler"),
        options.get("scheduled_sampling_order"),
    )
    if (sampler or "unipc") != "unipc" or int(order or 2) != 2:
        notes.append(
            "scheduled_sampling_sampler / scheduled_sampling_order do not change flow-matching "
            "rollouts: they step with Euler one timestep at a time, as SimpleTuner's do"
        )
    if float(options.get("scheduled_sampling_probability") or 0) == 0 and not int(
        options.get("scheduled_sampling_ramp_steps") or 0
    ):
        notes.append(
            "scheduled_sampling_probability is 0: no sample is rolled out (set it, or a ramp)"
        )
    return notes

"""Scheduled-sampling rollouts of flow-matching models: the model, without gradients, denoises
each chosen sample from its source timestep down to its target one, Euler one timestep at a
time (SimpleTuner's ``_apply_flow_matching_rollout``), and the training step runs on the result.

A rollout state at integer timestep t sits at σ = t / (T - 1) on the straight path between the
clean latents and the sample's input noise; the model is conditioned on σ·T as everywhere in
st_ray. Samples are rolled out together: each step runs the batch once and moves only the
samples whose rollout is not finished.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from st_ray.train import losses, noise, scheduled_sampling, timesteps

if TYPE_CHECKING:
    from st_ray.train.build import Run

# predict(noisy latents, σ per sample) -> the model's velocity, no gradients
Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class RolledOut:
    noisy: torch.Tensor  # the training input
    sigmas: torch.Tensor  # its σ per sample
    offsets: torch.Tensor  # rollout lengths (0: the sample kept its drawn input)
    clean: torch.Tensor | None = None  # ReflexFlow: prediction on the drawn input
    biased: torch.Tensor | None = None  # ReflexFlow: prediction on the rolled-out input
    timesteps: torch.Tensor | None = None  # the conditioning timesteps σ·T (set by ``roll``)


@torch.no_grad()
def flow_rollout(
    predict: Predict,
    x0: torch.Tensor,
    input_noise: torch.Tensor,
    sigmas: torch.Tensor,
    offsets: torch.Tensor,
    *,
    num_train_timesteps: int,
    reflexflow: bool,
) -> RolledOut:
    """Roll the samples with ``offsets`` > 0 out from target + offset to target (the target
    timestep is ⌊σ·T⌋, SimpleTuner's ``long()`` of its flow timesteps)."""
    device = x0.device
    last = num_train_timesteps - 1
    denom = max(float(last), 1.0)
    target = (sigmas.to(device) * num_train_timesteps).long().clamp(0, last)
    source = scheduled_sampling.source_timesteps(target, offsets.to(device), num_train_timesteps)
    rolled = source > target
    drawn = noise.flow_noisy(x0, input_noise, sigmas.to(device))
    clean = predict(drawn, sigmas.to(device)).float() if reflexflow else None
    if not bool(rolled.any()):
        return RolledOut(drawn, sigmas, offsets * 0, clean, clean)
    current = noise.flow_noisy(x0, input_noise, source / denom)
    t = source.clone()
    while bool((t > target).any()):
        active = (t > target) & (t > 0)
        if not bool(active.any()):
            break
        velocity = predict(current, t / denom).float()
        step = torch.where(active, (t - 1).clamp(min=target) - t, torch.zeros_like(t)) / denom
        current = current + step.view(-1, *[1] * (current.dim() - 1)).to(current.dtype) * velocity
        t = torch.where(active, (t - 1).clamp(min=target), t)
    out_sigmas = torch.where(rolled, t / denom, sigmas.to(device).float())
    noisy = torch.where(rolled.view(-1, *[1] * (x0.dim() - 1)), current, drawn)
    biased = None
    if reflexflow:
        final = predict(noisy, out_sigmas).float()
        biased = torch.where(rolled.view(-1, *[1] * (x0.dim() - 1)), final, clean)
    return RolledOut(noisy, out_sigmas, offsets * rolled.to(offsets.device), clean, biased)


def roll(
    run: Run,
    x0: torch.Tensor,
    input_noise: torch.Tensor,
    sigmas: torch.Tensor | None,
    inputs: dict,
    generator: torch.Generator,
    step: int,
) -> RolledOut | None:
    """The batch's scheduled-sampling input at global ``step``; None when it is off (or the
    batch has no σ: not flow matching)."""
    settings = run.scheduled_sampling
    if settings is None or sigmas is None:
        return None
    probability = scheduled_sampling.rollout_probability(settings, step)
    offsets = scheduled_sampling.draw_offsets(
        x0.shape[0], settings.max_offset, settings.strategy, probability, generator
    )
    T = run.timestep_sampler.num_train_timesteps

    def predict(latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = timesteps.flow_timesteps(sigma, T)
        args = (run.core, latents.to(run.dtype), t, inputs, run.plan.options)
        return run.family.predict(*args, generator=generator).output

    rolled = flow_rollout(
        predict,
        x0,
        input_noise,
        sigmas,
        offsets,
        num_train_timesteps=T,
        reflexflow=settings.reflexflow,
    )
    run.metrics["scheduled_sampling_rollouts"] = float((rolled.offsets > 0).sum())
    rolled.timesteps = timesteps.flow_timesteps(rolled.sigmas, T)
    return rolled


def rolled_loss(
    run: Run,
    pred: torch.Tensor,
    target: torch.Tensor,
    t: torch.Tensor,
    x0: torch.Tensor,
    rolled: RolledOut,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ReflexFlow loss of a rolled-out flow-matching batch (its anti-drift term logged as
    reflexflow_anti_drift); a loss mask multiplies the per-element loss first, as in
    ``losses.masked_mean``."""
    elementwise = losses.configured_elementwise_loss(
        run.loss_config,
        pred,
        target,
        timesteps=t,
        snr=None,
        flow=True,
        num_train_timesteps=run.timestep_sampler.num_train_timesteps,
    )
    if mask is not None:
        elementwise = elementwise * (
            mask.unsqueeze(1) if mask.ndim == elementwise.ndim - 1 else mask
        )
    loss, drift = scheduled_sampling.reflexflow_loss(
        elementwise,
        pred,
        clean=rolled.clean,
        biased=rolled.biased,
        noisy=rolled.noisy,
        x0=x0,
        settings=run.scheduled_sampling,
    )
    run.metrics["reflexflow_anti_drift"] = float(drift.detach())
    return loss

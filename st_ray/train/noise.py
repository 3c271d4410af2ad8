"""Noise, noisy model inputs and training targets.

DDPM families (those not ``FamilySpec.flow_matching``) noise with the discrete schedule of their
``scheduler/scheduler_config.json``: x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε, with targets ε
(epsilon), sqrt(ᾱ_t)·ε - sqrt(1-ᾱ_t)·x0 (v_prediction) or x0 (sample) — the same numbers as
diffusers' ``DDPMScheduler.add_noise`` / ``get_velocity``. Flow-matching families
(``FamilySpec.flow_matching``) interpolate x_σ = (1-σ)·x0 + σ·ε and regress the velocity ε - x0.

Two SimpleTuner noise options shape ε (``helpers/models/common.py``, ``prepare_batch``):
offset noise (DDPM families only) changes ε for both the input and the target; input
perturbation changes only the noise that builds the model input, never the target.

Randomness comes from the ``torch.Generator`` passed in; draws are made on the generator's
device and moved to the tensor they modify.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

DDPM_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


# --- DDPM schedule --------------------------------------------------------------------------


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    # The Glide/iDDPM cosine schedule, in Python floats as diffusers computes it.
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(
            1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps),
            max_beta,
        )
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas whose last step has zero SNR (Lin et al. 2023, "Common Diffusion Noise Schedules
    and Sample Steps are Flawed", Algorithm 1): shift sqrt(ᾱ) so its last value is 0 and
    rescale so its first value is unchanged."""
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alphas_bar = sqrt_ab**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


def betas_from_config(
    scheduler_config: Mapping[str, Any], *, rescale_betas_zero_snr: bool | None = None
) -> torch.Tensor:
    """The float32 betas a diffusers ``DDPMScheduler`` builds from ``scheduler_config``.

    ``rescale_betas_zero_snr`` (the option of that name) overrides the config's own key when
    given; SimpleTuner passes the option to ``DDPMScheduler.from_pretrained`` the same way.
    """
    num = int(scheduler_config.get("num_train_timesteps", 1000))
    beta_start = float(scheduler_config.get("beta_start", 0.0001))
    beta_end = float(scheduler_config.get("beta_end", 0.02))
    schedule = scheduler_config.get("beta_schedule", "linear")
    trained = scheduler_config.get("trained_betas")
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float32)
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num, dtype=torch.float32)
    elif schedule == "scaled_linear":
        # Linear in sqrt(beta): the latent-diffusion (SD) schedule.
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num, dtype=torch.float32) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = _cosine_betas(num)
    elif schedule == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, num)) * (beta_end - beta_start) + beta_start
    else:
        raise ValueError(
            f"scheduler config: beta_schedule {schedule!r} is not supported; "
            f"accepted: {', '.join(BETA_SCHEDULES)} (or trained_betas)"
        )
    if rescale_betas_zero_snr is None:
        rescale_betas_zero_snr = bool(scheduler_config.get("rescale_betas_zero_snr", False))
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def alphas_cumprod_from_config(
    scheduler_config: Mapping[str, Any], *, rescale_betas_zero_snr: bool | None = None
) -> torch.Tensor:
    """ᾱ_t for t = 0..num_train_timesteps-1 (float32), as ``DDPMScheduler.alphas_cumprod``.
    With zero terminal SNR the last entry is exactly 0 (pure noise at t = T-1)."""
    betas = betas_from_config(scheduler_config, rescale_betas_zero_snr=rescale_betas_zero_snr)
    return torch.cumprod(1.0 - betas, dim=0)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) values shaped (B, 1, ..., 1) to broadcast over a (B, ...) tensor."""
    values = values.to(device=like.device).reshape(-1)
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def _coefficients(
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # sqrt(ᾱ_t), sqrt(1-ᾱ_t) in float32 (the schedule's precision), then the sample's dtype.
    ab = alphas_cumprod.to(device=like.device, dtype=torch.float32)[
        timesteps.to(like.device).long()
    ]
    return (
        _per_sample(ab.sqrt(), like).to(like.dtype),
        _per_sample((1.0 - ab).sqrt(), like).to(like.dtype),
    )


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·noise for one integer timestep per sample."""
    a, s = _coefficients(timesteps, alphas_cumprod, x0)
    return a * x0 + s * noise


def snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t / (1-ᾱ_t) per timestep (float32); 0 at a zero-SNR last step."""
    ab = alphas_cumprod.to(torch.float32)[timesteps.to(alphas_cumprod.device).long()]
    return ab / (1.0 - ab)


def ddpm_target(
    prediction_type: str,
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """What a DDPM-family denoiser is trained to output. ``noise`` is the un-perturbed noise
    (offset noise included, input perturbation not)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        a, s = _coefficients(timesteps, alphas_cumprod, x0)
        return a * noise - s * x0
    if prediction_type == "sample":
        return x0
    raise ValueError(
        f"prediction_type {prediction_type!r} has no DDPM target; "
        f"accepted: {', '.join(DDPM_PREDICTION_TYPES)}"
    )


# --- flow matching --------------------------------------------------------------------------


def flow_noisy(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_σ = (1-σ)·x0 + σ·noise; ``sigmas`` holds one σ per sample (any shape with B values)."""
    s = _per_sample(sigmas, x0).to(x0.dtype)
    return (1.0 - s) * x0 + s * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity d x_σ / dσ = noise - x0."""
    return noise - x0


# --- noise options --------------------------------------------------------------------------


def apply_noise_offset(
    noise: torch.Tensor, offset: float, probability: float, generator: torch.Generator
) -> torch.Tensor:
    """Offset noise: with ``probability`` (one draw for the whole batch, as SimpleTuner does),
    add ``offset`` · N(0,1) constant over each sample's spatial (and temporal) axes, one value
    per (sample, channel), so the model can learn to move an image's mean brightness."""
    if offset == 0 or probability <= 0:
        return noise
    device = generator.device
    if probability < 1 and torch.rand((), generator=generator, device=device).item() >= probability:
        return noise
    shape = (noise.shape[0], noise.shape[1], *([1] * (noise.ndim - 2)))
    shift = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return noise + (offset * shift).to(device=noise.device, dtype=noise.dtype)


def input_perturbation_scale(
    input_perturbation: float, step: int, input_perturbation_steps: int
) -> float:
    """Strength of input perturbation at optimizer step ``step``: constant when
    ``input_perturbation_steps`` is 0, else fading linearly from full at step 0 to 0 at
    ``input_perturbation_steps`` (and off afterwards)."""
    if not input_perturbation_steps:
        return float(input_perturbation)
    if step >= input_perturbation_steps:
        return 0.0
    return float(input_perturbation) * (1.0 - step / input_perturbation_steps)


def perturb_noise(
    noise: torch.Tensor,
    input_perturbation: float,
    step: int,
    input_perturbation_steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """The noise that builds the model input: ``noise`` + scale · N(0,1) (Ning et al. 2023,
    "Input Perturbation Reduces Exposure Bias in Diffusion Models"). The target keeps
    ``noise``; the mismatch is the regulariser."""
    scale = input_perturbation_scale(input_perturbation, step, input_perturbation_steps)
    if scale == 0:
        return noise
    extra = torch.randn(noise.shape, generator=generator, device=generator.device)
    return noise + (scale * extra).to(device=noise.device, dtype=noise.dtype)


@dataclass(frozen=True)
class NoiseSampler:
    """Draws the training noise of a batch with the noise options applied."""

    noise_offset: float = 0.0
    noise_offset_probability: float = 1.0
    input_perturbation: float = 0.0
    input_perturbation_steps: int = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, flow_matching: bool) -> NoiseSampler:
        # SimpleTuner applies offset noise only when offset_noise is on and the model is not
        # flow matching (a constant shift is meaningless for the x0 -> noise velocity).
        offset_on = bool(options["offset_noise"]) and not flow_matching
        return cls(
            noise_offset=float(options["noise_offset"]) if offset_on else 0.0,
            noise_offset_probability=float(options["noise_offset_probability"]),
            input_perturbation=float(options["input_perturbation"] or 0.0),
            input_perturbation_steps=int(options["input_perturbation_steps"] or 0),
        )

    def sample(
        self, latents: torch.Tensor, generator: torch.Generator, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise, input_noise) for ``latents``: ``noise`` builds the target, ``input_noise``
        (noise plus any input perturbation) builds the noisy model input."""
        noise = torch.randn(latents.shape, generator=generator, device=generator.device)
        noise = noise.to(device=latents.device, dtype=latents.dtype)
        noise = apply_noise_offset(
            noise, self.noise_offset, self.noise_offset_probability, generator
        )
        input_noise = perturb_noise(
            noise, self.input_perturbation, step, self.input_perturbation_steps, generator
        )
        return noise, input_noise

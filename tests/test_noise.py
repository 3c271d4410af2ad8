"""Noise schedules, noisy inputs and targets, checked against diffusers' DDPMScheduler and by
hand; the noise options against draws replayed from a cloned generator."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from st_ray.config.options import OPTIONS
from st_ray.train.noise import (
    NoiseSampler,
    add_noise,
    alphas_cumprod_from_config,
    apply_noise_offset,
    ddpm_target,
    flow_noisy,
    flow_target,
    input_perturbation_scale,
    perturb_noise,
    snr,
)

SD15 = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
CONFIGS = [
    SD15,
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 500},
    {"beta_schedule": "sigmoid", "beta_start": 0.0001, "beta_end": 0.02},
]
DEFAULTS = {o.name: o.default for o in OPTIONS}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def scheduler(config: dict, rescale: bool) -> DDPMScheduler:
    return DDPMScheduler(**{**config, "rescale_betas_zero_snr": rescale})


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c["beta_schedule"])
def test_alphas_cumprod_match_diffusers(config: dict, rescale: bool) -> None:
    ours = alphas_cumprod_from_config(config, rescale_betas_zero_snr=rescale)
    theirs = scheduler(config, rescale).alphas_cumprod
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_zero_terminal_snr() -> None:
    plain = alphas_cumprod_from_config(SD15)
    rescaled = alphas_cumprod_from_config(SD15, rescale_betas_zero_snr=True)
    assert plain[-1] > 1e-3  # SD's schedule never reaches pure noise...
    assert rescaled[-1].item() == pytest.approx(0.0, abs=1e-12)  # ...the rescaled one does
    assert rescaled[0].item() == pytest.approx(plain[0].item(), rel=1e-5)  # first step kept
    assert bool((rescaled[1:] <= rescaled[:-1]).all())
    assert snr(torch.tensor([999]), rescaled).item() == pytest.approx(0.0, abs=1e-12)
    # The config's own key is honoured when the option does not override it.
    torch.testing.assert_close(
        alphas_cumprod_from_config({**SD15, "rescale_betas_zero_snr": True}), rescaled
    )


def test_unknown_beta_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="beta_schedule 'laplace'.*accepted: linear"):
        alphas_cumprod_from_config({"beta_schedule": "laplace"})


@pytest.mark.parametrize("rescale", [False, True])
def test_add_noise_target_and_snr_match_diffusers(rescale: bool) -> None:
    sched = scheduler(SD15, rescale)
    ac = alphas_cumprod_from_config(SD15, rescale_betas_zero_snr=rescale)
    x0 = torch.randn(4, 4, 8, 8, generator=gen(1))
    noise = torch.randn(4, 4, 8, 8, generator=gen(2))
    t = torch.tensor([0, 250, 731, 999])
    torch.testing.assert_close(add_noise(x0, noise, t, ac), sched.add_noise(x0, noise, t))
    torch.testing.assert_close(
        ddpm_target("v_prediction", x0, noise, t, ac), sched.get_velocity(x0, noise, t)
    )
    assert ddpm_target("epsilon", x0, noise, t, ac) is noise
    assert ddpm_target("sample", x0, noise, t, ac) is x0
    torch.testing.assert_close(snr(t, ac), compute_snr(sched, t), rtol=1e-5, atol=0)


def test_add_noise_by_hand() -> None:
    ac = torch.tensor([0.64, 0.36])
    x0 = torch.full((2, 1, 2, 2), 1.0)
    noise = torch.full((2, 1, 2, 2), 10.0)
    out = add_noise(x0, noise, torch.tensor([0, 1]), ac)
    assert out[0].unique().item() == pytest.approx(0.8 + 0.6 * 10)
    assert out[1].unique().item() == pytest.approx(0.6 + 0.8 * 10)
    v = ddpm_target("v_prediction", x0, noise, torch.tensor([0, 1]), ac)
    assert v[0].unique().item() == pytest.approx(0.8 * 10 - 0.6)
    torch.testing.assert_close(
        snr(torch.tensor([0, 1]), ac), torch.tensor([0.64 / 0.36, 0.36 / 0.64])
    )


def test_unknown_prediction_type_is_refused() -> None:
    x = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match="'flow_matching' has no DDPM target"):
        ddpm_target("flow_matching", x, x, torch.tensor([0]), torch.ones(1))


def test_flow_algebra() -> None:
    x0 = torch.randn(3, 4, 5, 5, generator=gen(3))
    noise = torch.randn(3, 4, 5, 5, generator=gen(4))
    sigmas = torch.tensor([0.0, 0.3, 1.0])
    noisy = flow_noisy(x0, noise, sigmas)
    target = flow_target(x0, noise)
    torch.testing.assert_close(noisy[0], x0[0])
    torch.testing.assert_close(noisy[2], noise[2])
    torch.testing.assert_close(noisy[1], 0.7 * x0[1] + 0.3 * noise[1])
    # Stepping along the target reaches either end: x_σ - σ·v = x0, x_σ + (1-σ)·v = noise.
    s = sigmas.view(3, 1, 1, 1)
    torch.testing.assert_close(noisy - s * target, x0)
    torch.testing.assert_close(noisy + (1 - s) * target, noise)
    # σ may arrive already broadcast-shaped.
    torch.testing.assert_close(flow_noisy(x0, noise, sigmas.view(3, 1, 1, 1)), noisy)


def test_noise_offset_is_per_sample_and_channel() -> None:
    noise = torch.zeros(3, 4, 6, 6)
    out = apply_noise_offset(noise, 0.1, 1.0, gen(5))
    expected = 0.1 * torch.randn(3, 4, 1, 1, generator=gen(5))
    torch.testing.assert_close(out, expected.expand(3, 4, 6, 6))
    # Video latents (B, C, F, H, W) get one constant per (sample, channel) too.
    video = apply_noise_offset(torch.zeros(2, 3, 4, 5, 5), 0.2, 1.0, gen(6))
    assert video.shape == (2, 3, 4, 5, 5)
    assert bool((video == video[:, :, :1, :1, :1]).all())
    # Off: nothing added.
    assert apply_noise_offset(noise, 0.0, 1.0, gen(5)) is noise
    assert apply_noise_offset(noise, 0.1, 0.0, gen(5)) is noise


def test_noise_offset_probability_is_one_draw_per_batch() -> None:
    noise = torch.zeros(2, 2, 2, 2)
    hits = 0
    for seed in range(400):
        g = gen(seed)
        applied = not torch.equal(apply_noise_offset(noise, 0.1, 0.25, g), noise)
        # Replay: the first draw decides for the whole batch.
        assert applied == (torch.rand((), generator=gen(seed)).item() < 0.25)
        hits += applied
    assert 0.18 < hits / 400 < 0.32


def test_input_perturbation_decay() -> None:
    assert input_perturbation_scale(0.1, 0, 0) == 0.1
    assert input_perturbation_scale(0.1, 10_000, 0) == 0.1
    assert input_perturbation_scale(0.1, 0, 100) == pytest.approx(0.1)
    assert input_perturbation_scale(0.1, 25, 100) == pytest.approx(0.075)
    assert input_perturbation_scale(0.1, 99, 100) == pytest.approx(0.001)
    assert input_perturbation_scale(0.1, 100, 100) == 0.0
    noise = torch.randn(2, 4, 3, 3, generator=gen(7))
    out = perturb_noise(noise, 0.1, 50, 100, gen(8))
    torch.testing.assert_close(out, noise + 0.05 * torch.randn(2, 4, 3, 3, generator=gen(8)))
    assert perturb_noise(noise, 0.1, 100, 100, gen(8)) is noise
    assert perturb_noise(noise, 0.0, 0, 0, gen(8)) is noise


def test_noise_sampler_from_options() -> None:
    latents = torch.zeros(2, 4, 8, 8)
    plain = NoiseSampler.from_options(DEFAULTS, flow_matching=False)
    assert plain == NoiseSampler(noise_offset_probability=0.25)  # offset_noise is off by default
    noise, input_noise = plain.sample(latents, gen(9), step=0)
    torch.testing.assert_close(noise, torch.randn(2, 4, 8, 8, generator=gen(9)))
    assert input_noise is noise

    options = {**DEFAULTS, "offset_noise": True, "noise_offset_probability": 1.0}
    options |= {"input_perturbation": 0.1, "input_perturbation_steps": 10}
    assert NoiseSampler.from_options(options, flow_matching=True).noise_offset == 0.0
    sampler = NoiseSampler.from_options(options, flow_matching=False)
    assert sampler.noise_offset == 0.1
    noise, input_noise = sampler.sample(latents, gen(10), step=5)
    g = gen(10)
    base = torch.randn(2, 4, 8, 8, generator=g)
    offset = 0.1 * torch.randn(2, 4, 1, 1, generator=g)
    torch.testing.assert_close(noise, base + offset)
    torch.testing.assert_close(input_noise, noise + 0.05 * torch.randn(2, 4, 8, 8, generator=g))
    # Same seed, same draws.
    again = sampler.sample(latents, gen(10), step=5)
    assert torch.equal(again[0], noise) and torch.equal(again[1], input_noise)
    assert not math.isnan(float(noise.sum()))

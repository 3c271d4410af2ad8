"""Scheduled sampling and ReflexFlow maths (st_ray.train.scheduled_sampling, .rollout) against
hand-computed cases. The in-process training step is in tests/test_objectives.py."""

from __future__ import annotations

import math

import pytest
import torch

from st_ray.train import rollout
from st_ray.train import scheduled_sampling as ss


def _settings(flow: bool = True, **options) -> ss.Settings:
    defaults = {
        "scheduled_sampling_max_step_offset": 4,
        "scheduled_sampling_probability": 0.3,
        "scheduled_sampling_prob_start": 0.0,
        "scheduled_sampling_prob_end": 0.5,
        "scheduled_sampling_reflexflow_alpha": 1.0,
        "scheduled_sampling_reflexflow_beta1": 10.0,
        "scheduled_sampling_reflexflow_beta2": 1.0,
    }
    return ss.Settings.from_options({**defaults, **options}, flow_matching=flow)


def test_off_without_an_offset_and_reflexflow_defaults_to_flow_matching() -> None:
    assert (
        ss.Settings.from_options({"scheduled_sampling_max_step_offset": 0}, flow_matching=True)
        is None
    )
    assert _settings().reflexflow and not _settings(flow=False).reflexflow
    assert not _settings(scheduled_sampling_reflexflow=False).reflexflow


def test_probability_ramp_by_hand() -> None:
    # No ramp: the plain probability. prob_start 0 falls back to it (SimpleTuner's `or`).
    assert ss.rollout_probability(_settings(), 50) == 0.3
    ramp = _settings(scheduled_sampling_ramp_steps=10, scheduled_sampling_start_step=5)
    assert ss.rollout_probability(ramp, 0) == 0.3  # before the ramp: prob_start (-> 0.3)
    assert ss.rollout_probability(ramp, 10) == pytest.approx(0.3 + 0.2 * 0.5)
    assert ss.rollout_probability(ramp, 100) == pytest.approx(0.5)
    cosine = _settings(
        scheduled_sampling_ramp_steps=10,
        scheduled_sampling_prob_start=0.1,
        scheduled_sampling_ramp_shape="cosine",
    )
    # progress 0.25 -> 0.5 - 0.5 cos(pi/4)
    expected = 0.1 + 0.4 * (0.5 - 0.5 * math.cos(math.pi * 0.25))
    assert ss.rollout_probability(cosine, 2.5) == pytest.approx(expected)


def test_offsets_follow_the_strategy_and_probability() -> None:
    gen = torch.Generator().manual_seed(0)
    uniform = ss.draw_offsets(4000, 4, "uniform", 1.0, gen)
    assert set(uniform.tolist()) == {0, 1, 2, 3, 4}
    early = ss.draw_offsets(4000, 4, "biased_early", 1.0, gen).float().mean()
    late = ss.draw_offsets(4000, 4, "biased_late", 1.0, gen).float().mean()
    # E[round(4u²)] is about 4/3, E[round(4(1-u²))] about 8/3.
    assert early < 1.6 < 2.4 < late
    assert ss.draw_offsets(100, 4, "uniform", 0.0, gen).sum() == 0
    some = ss.draw_offsets(4000, 4, "biased_late", 0.5, gen)
    assert 0.4 < (some == 0).float().mean() < 0.6
    target = torch.tensor([10, 997])
    assert ss.source_timesteps(target, torch.tensor([3, 3]), 1000).tolist() == [13, 999]


def test_reflexflow_terms_by_hand() -> None:
    clean = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    biased = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    # e = (1, 0, 0, -1), |e|_1 = 2: w = 1 + α e / 2
    weight = ss.frequency_weight(clean, biased, alpha=1.0)
    assert weight.tolist() == [[1.5, 1.0, 1.0, 0.5]]
    x0 = torch.zeros(1, 4)
    noisy = torch.tensor([[3.0, 4.0, 0.0, 0.0]])  # direction (0.6, 0.8, 0, 0)
    pred = torch.tensor([[0.0, 2.0, 0.0, 0.0]])  # unit (0, 1, 0, 0)
    drift = ss.anti_drift(pred, noisy, x0)
    assert drift.item() == pytest.approx(0.6**2 + 0.2**2)
    elementwise = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    settings = _settings(scheduled_sampling_reflexflow_beta2=2.0)
    loss, mean_drift = ss.reflexflow_loss(
        elementwise, pred, clean=clean, biased=biased, noisy=noisy, x0=x0, settings=settings
    )
    # mean(1·w)·β2 = 1·2, plus β1·drift = 10·0.4
    assert loss.item() == pytest.approx(2.0 + 10 * 0.4)
    assert mean_drift.item() == pytest.approx(0.4)


def test_flow_rollout_steps_euler_from_source_to_target() -> None:
    """A model that always predicts the true velocity (noise - x0) walks the straight path, so
    the rollout lands exactly on the drawn input at the target; a model predicting 0 stays at
    the source state. One sample rolled 3 timesteps, one kept."""
    T = 1001  # σ = t / 1000 on the rollout grid
    x0 = torch.tensor([[1.0], [2.0]])
    eps = torch.tensor([[-1.0], [0.5]])
    sigmas = torch.tensor([0.5, 0.2])  # targets t = 500 and 200
    offsets = torch.tensor([3, 0])
    calls: list[list[float]] = []

    def exact(latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls.append(sigma.tolist())
        return (eps - x0).expand_as(latents)

    out = rollout.flow_rollout(
        exact, x0, eps, sigmas, offsets, num_train_timesteps=T, reflexflow=True
    )
    expected = (1 - sigmas[:, None]) * x0 + sigmas[:, None] * eps
    assert torch.allclose(out.noisy, expected, atol=1e-6)
    assert out.offsets.tolist() == [3, 0]
    # clean pass, three rollout steps at t = 503, 502, 501, then the final (biased) pass.
    assert [round(c[0] * 1000) for c in calls] == [500, 503, 502, 501, 500]
    assert out.sigmas.tolist() == pytest.approx([0.5, 0.2])

    def still(latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(latents)

    out = rollout.flow_rollout(
        still, x0, eps, sigmas, offsets, num_train_timesteps=T, reflexflow=False
    )
    source = 0.497 * x0[0] + 0.503 * eps[0]
    assert out.noisy[0].item() == pytest.approx(source.item(), abs=1e-6)
    assert out.noisy[1].item() == pytest.approx(expected[1].item(), abs=1e-6)
    assert out.clean is None

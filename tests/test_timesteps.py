"""Timestep and sigma sampling: exact weights and shifts by hand, distributions with fixed
generators, and the options wiring."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from st_ray.config.options import OPTIONS
from st_ray.train.timesteps import (
    TimestepSampler,
    auto_shift,
    flow_timesteps,
    image_seq_len,
    sample_beta,
    sample_ddpm_timesteps,
    sample_flow_sigmas,
    segment_bounds,
    shift_sigmas,
    timestep_bias_weights,
)

DEFAULTS = {o.name: o.default for o in OPTIONS}
T = 1000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- bias weights ---------------------------------------------------------------------------


def test_bias_later_doubles_the_last_portion() -> None:
    w = timestep_bias_weights("later", 2.0, 0, T, 0.25, T)
    assert w.sum().item() == pytest.approx(1.0)
    # 750 timesteps at weight 1 and 250 at weight 2: total 1250.
    torch.testing.assert_close(w[:750], torch.full((750,), 1 / 1250))
    torch.testing.assert_close(w[750:], torch.full((250,), 2 / 1250))


def test_bias_earlier_favours_low_timesteps() -> None:
    w = timestep_bias_weights("earlier", 3.0, 0, T, 0.1, T)
    torch.testing.assert_close(w[:100], torch.full((100,), 3 / 1200))
    torch.testing.assert_close(w[100:], torch.full((900,), 1 / 1200))


def test_bias_range_multiplies_inside_and_keeps_the_rest() -> None:
    w = timestep_bias_weights("range", 4.0, 200, 500, 0.25, T)
    # SimpleTuner's range bias changes odds; outside [begin, end) stays at weight 1, not 0.
    torch.testing.assert_close(w[200:500], torch.full((300,), 4 / 1900))
    torch.testing.assert_close(w[:200], torch.full((200,), 1 / 1900))
    torch.testing.assert_close(w[500:], torch.full((500,), 1 / 1900))
    assert w[199] < w[200] and w[499] > w[500]


def test_bias_none_and_degenerate_portion_are_uniform() -> None:
    uniform = torch.full((T,), 1 / T)
    torch.testing.assert_close(timestep_bias_weights("none", 5.0, 0, T, 0.25, T), uniform)
    torch.testing.assert_close(timestep_bias_weights("later", 5.0, 0, T, 0.0, T), uniform)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("later", 0.0, 0, T, 0.25), "multiplier must be greater than 0"),
        (("range", 2.0, 500, 500, 0.25), "0 <= timestep_bias_begin < timestep_bias_end <= 1000"),
        (("range", 2.0, 0, 1001, 0.25), "got begin=0, end=1001"),
        (("sideways", 2.0, 0, T, 0.25), "is not one of earlier, later, range, none"),
    ],
)
def test_bias_refuses_bad_settings(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        timestep_bias_weights(*args, T)


# --- DDPM sampling --------------------------------------------------------------------------


def test_segment_bounds() -> None:
    assert segment_bounds(4, T) == ([750, 500, 250, 0], [1000, 750, 500, 250])
    # The lowest segment takes the remainder.
    assert segment_bounds(3, T) == ([667, 334, 0], [1000, 667, 334])


@pytest.mark.parametrize("batch", [2, 3, 4, 7])
def test_segmented_sampling_puts_one_sample_per_segment(batch: int) -> None:
    lows, highs = segment_bounds(batch, T)
    for seed in range(50):
        t = sample_ddpm_timesteps(batch, T, gen(seed), segmented=True)
        assert t.dtype == torch.int64 and t.shape == (batch,)
        for i in range(batch):
            assert lows[i] <= t[i].item() < highs[i]


def test_segmented_sampling_covers_each_segment_uniformly() -> None:
    t = torch.stack([sample_ddpm_timesteps(4, T, gen(s), segmented=True) for s in range(2000)])
    # Segment 3 is [0, 250): its mean is ~124.5 and both halves are hit about equally.
    assert t[:, 3].float().mean().item() == pytest.approx(124.5, abs=6)
    assert (t[:, 3] < 125).float().mean().item() == pytest.approx(0.5, abs=0.04)


def test_segmented_sampling_renormalises_weights_within_a_segment() -> None:
    # Bias [0, 50) x 9 inside segment [0, 250): P(t < 50) = 450 / (450 + 200) there.
    weights = timestep_bias_weights("range", 9.0, 0, 50, 0.25, T)
    t = torch.stack(
        [sample_ddpm_timesteps(4, T, gen(s), segmented=True, weights=weights) for s in range(2000)]
    )
    assert (t[:, 3] < 50).float().mean().item() == pytest.approx(450 / 650, abs=0.04)
    # The top segment has no favoured timestep: still uniform over [750, 1000).
    assert (t[:, 0] < 875).float().mean().item() == pytest.approx(0.5, abs=0.04)


def test_independent_sampling_follows_the_weights() -> None:
    weights = timestep_bias_weights("later", 2.0, 0, T, 0.5, T)
    t = sample_ddpm_timesteps(20_000, T, gen(11), segmented=False, weights=weights)
    assert t.min() >= 0 and t.max() < T
    # Upper half at weight 2, lower at 1: two thirds of the draws land in the upper half.
    assert (t >= 500).float().mean().item() == pytest.approx(2 / 3, abs=0.015)
    # Zero weight outside a window confines the draws to it.
    window = torch.zeros(T)
    window[100:110] = 1
    t = sample_ddpm_timesteps(500, T, gen(12), segmented=False, weights=window)
    assert t.min() >= 100 and t.max() < 110


def test_ddpm_sampling_is_reproducible_and_checked() -> None:
    a = sample_ddpm_timesteps(8, T, gen(13), segmented=True)
    assert torch.equal(a, sample_ddpm_timesteps(8, T, gen(13), segmented=True))
    assert sample_ddpm_timesteps(1, T, gen(13), segmented=True).shape == (1,)
    with pytest.raises(ValueError, match="disable_segmented_timestep_sampling"):
        sample_ddpm_timesteps(11, 10, gen(0), segmented=True)
    window = torch.zeros(T)
    window[:10] = 1
    with pytest.raises(ValueError, match="zero over a whole segment"):
        sample_ddpm_timesteps(2, T, gen(0), segmented=True, weights=window)


# --- flow sigmas ----------------------------------------------------------------------------


def test_sigmoid_and_uniform_sigmas_replay_the_generator() -> None:
    sig = sample_flow_sigmas(6, gen(14), mode="sigmoid", sigmoid_scale=1.5)
    torch.testing.assert_close(sig, torch.sigmoid(1.5 * torch.randn(6, generator=gen(14))))
    uni = sample_flow_sigmas(6, gen(15), mode="uniform")
    torch.testing.assert_close(uni, torch.rand(6, generator=gen(15)))
    with pytest.raises(ValueError, match="not one of sigmoid, uniform, beta"):
        sample_flow_sigmas(1, gen(0), mode="cubic")


def test_sigmoid_scale_widens_the_spread() -> None:
    narrow = sample_flow_sigmas(20_000, gen(16), sigmoid_scale=0.5)
    wide = sample_flow_sigmas(20_000, gen(16), sigmoid_scale=3.0)
    assert narrow.median().item() == pytest.approx(0.5, abs=0.01)
    assert wide.std() > 2 * narrow.std()


@pytest.mark.parametrize(("a", "b"), [(2.0, 2.0), (0.5, 3.0), (4.0, 1.5)])
def test_beta_sigmas_have_beta_moments(a: float, b: float) -> None:
    s = sample_flow_sigmas(40_000, gen(17), mode="beta", beta_alpha=a, beta_beta=b).double()
    assert s.min() >= 0 and s.max() <= 1
    assert s.mean().item() == pytest.approx(a / (a + b), abs=0.006)
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    assert s.var().item() == pytest.approx(var, rel=0.04)
    # Quantiles agree with torch's own Beta sampler (an independent implementation).
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ref = torch.distributions.Beta(a, b).sample((40_000,)).double()
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    torch.testing.assert_close(s.quantile(q), ref.quantile(q), atol=0.012, rtol=0)


def test_beta_sampling_is_reproducible_and_checked() -> None:
    assert torch.equal(sample_beta(2.0, 3.0, 64, gen(18)), sample_beta(2.0, 3.0, 64, gen(18)))
    with pytest.raises(ValueError, match="must be greater than 0"):
        sample_beta(0.0, 2.0, 1, gen(0))


def test_shift_sigmas_by_hand() -> None:
    sig = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(shift_sigmas(sig, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(shift_sigmas(sig, 1.0), sig)
    # shift 1/3 undoes shift 3.
    torch.testing.assert_close(shift_sigmas(shift_sigmas(sig, 3.0), 1 / 3), sig)
    with pytest.raises(ValueError, match="greater than 0"):
        shift_sigmas(sig, 0.0)


def test_shift_matches_diffusers_exponential_time_shift() -> None:
    sig = torch.linspace(0.01, 0.99, 50)
    for shift in (0.5, 1.7, 3.0):
        theirs = FlowMatchEulerDiscreteScheduler()._time_shift_exponential(
            math.log(shift), 1.0, sig
        )
        torch.testing.assert_close(shift_sigmas(sig, shift), theirs)


def test_auto_shift_at_hand_computed_points() -> None:
    assert auto_shift(256) == pytest.approx(math.exp(0.5))
    assert auto_shift(4096) == pytest.approx(math.exp(1.15))
    # 512 px Flux image: 64x64 latent, 2x2 patches -> 1024 tokens; mu = 0.5 + 0.65 * 768/3840.
    assert auto_shift(1024) == pytest.approx(math.exp(0.63))
    # Beyond both ends the line extends: 8192 tokens -> mu = 0.5 + 0.65 * 7936/3840.
    assert auto_shift(8192) == pytest.approx(math.exp(0.5 + 0.65 * 7936 / 3840))
    assert auto_shift(64) == pytest.approx(math.exp(0.5 - 0.65 * 192 / 3840))
    assert auto_shift(1000, 0, 2000, 1.0, 2.0) == pytest.approx(math.exp(1.5))


def test_image_seq_len_and_flow_timesteps() -> None:
    assert image_seq_len((2, 16, 128, 128)) == 4096
    assert image_seq_len((2, 16, 65, 64)) == 32 * 32  # odd sides floor, as SimpleTuner does
    assert image_seq_len((1, 16, 5, 64, 64)) == 5 * 32 * 32
    assert image_seq_len((1, 4, 64, 64), patch_size=1) == 4096
    torch.testing.assert_close(
        flow_timesteps(torch.tensor([0.0, 0.25, 1.0])), torch.tensor([0.0, 250.0, 1000.0])
    )


# --- TimestepSampler ------------------------------------------------------------------------


def test_sampler_ddpm_from_default_options() -> None:
    sampler = TimestepSampler.from_options(DEFAULTS, flow_matching=False, num_train_timesteps=T)
    assert sampler.segmented and sampler.weights is None
    draw = sampler.sample(4, gen(19))
    assert draw.sigmas is None
    assert torch.equal(draw.timesteps, sample_ddpm_timesteps(4, T, gen(19), segmented=True))


def test_sampler_ddpm_bias_and_unsegmented() -> None:
    options = DEFAULTS | {
        "timestep_bias_strategy": "later",
        "timestep_bias_multiplier": 2.0,
        "timestep_bias_portion": 0.25,
        "disable_segmented_timestep_sampling": True,
    }
    sampler = TimestepSampler.from_options(options, flow_matching=False, num_train_timesteps=T)
    assert not sampler.segmented
    torch.testing.assert_close(sampler.weights, timestep_bias_weights("later", 2.0, 0, T, 0.25, T))
    expected = sample_ddpm_timesteps(16, T, gen(20), segmented=False, weights=sampler.weights)
    assert torch.equal(sampler.sample(16, gen(20)).timesteps, expected)


def test_sampler_flow_default_is_shifted_logit_normal() -> None:
    sampler = TimestepSampler.from_options(DEFAULTS, flow_matching=True, num_train_timesteps=T)
    assert sampler.mode == "sigmoid"
    assert sampler.shift == DEFAULTS["flow_schedule_shift"] == 3.0
    draw = sampler.sample(5, gen(21), image_seq_len=4096)  # a fixed shift ignores the size
    expected = shift_sigmas(torch.sigmoid(torch.randn(5, generator=gen(21))), 3.0)
    torch.testing.assert_close(draw.sigmas, expected)
    torch.testing.assert_close(draw.timesteps, 1000 * expected)


def test_sampler_flow_auto_shift_only_without_a_fixed_shift() -> None:
    options = DEFAULTS | {"flow_schedule_auto_shift": True}
    fixed = TimestepSampler.from_options(options, flow_matching=True, num_train_timesteps=T)
    assert fixed.shift == 3.0 and not fixed.auto_shift
    options = options | {"flow_schedule_shift": 0.0, "flow_use_uniform_schedule": True}
    sampler = TimestepSampler.from_options(options, flow_matching=True, num_train_timesteps=T)
    assert sampler.shift is None and sampler.auto_shift and sampler.mode == "uniform"
    draw = sampler.sample(5, gen(22), image_seq_len=1024)
    expected = shift_sigmas(torch.rand(5, generator=gen(22)), math.exp(0.63))
    torch.testing.assert_close(draw.sigmas, expected)
    with pytest.raises(ValueError, match="needs the batch's image_seq_len"):
        sampler.sample(5, gen(22))
    # The model's scheduler config supplies its own line.
    custom = TimestepSampler.from_options(
        options,
        flow_matching=True,
        num_train_timesteps=T,
        scheduler_config={"max_shift": 2.0, "base_shift": 1.0, "max_image_seq_len": 2256},
    )
    assert custom.shift_for(256) == pytest.approx(math.e)
    assert custom.shift_for(2256) == pytest.approx(math.exp(2.0))


def test_sampler_flow_no_shift_and_schedule_precedence() -> None:
    options = DEFAULTS | {"flow_schedule_shift": 0.0, "flow_use_beta_schedule": True}
    sampler = TimestepSampler.from_options(options, flow_matching=True, num_train_timesteps=T)
    assert sampler.mode == "beta" and sampler.shift_for(4096) is None
    torch.testing.assert_close(sampler.sample(8, gen(23)).sigmas, sample_beta(2.0, 2.0, 8, gen(23)))
    # Both set: SimpleTuner's branch order picks uniform.
    both = options | {"flow_use_uniform_schedule": True}
    assert (
        TimestepSampler.from_options(both, flow_matching=True, num_train_timesteps=T).mode
        == "uniform"
    )
    # Bias options do not touch flow sampling.
    biased = options | {"timestep_bias_strategy": "later", "timestep_bias_multiplier": 2.0}
    assert (
        TimestepSampler.from_options(biased, flow_matching=True, num_train_timesteps=T).weights
        is None
    )

"""Loss pieces against hand-computed values, torch's Huber losses where the curves coincide,
diffusers' SNR and the Min-SNR / soft-SNR formulas written out independently."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from st_ray.config.options import OPTIONS
from st_ray.train.losses import (
    LossConfig,
    compute_loss,
    elementwise_loss,
    flow_matching_huber_snr,
    loss_mask_from_conditioning,
    masked_mean,
    min_snr_weights,
    reduce_loss,
    scheduled_huber_c,
    soft_min_snr,
)
from st_ray.train.noise import snr as ddpm_snr

DEFAULTS = {o.name: o.default for o in OPTIONS}
SD15 = DDPMScheduler(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- elementwise loss ------------------------------------------------------------------------


def test_l2_is_squared_error() -> None:
    pred, target = randn(2, 4, 3, 3, seed=1), randn(2, 4, 3, 3, seed=2)
    got = elementwise_loss(pred, target, "l2")
    torch.testing.assert_close(got, F.mse_loss(pred, target, reduction="none"))


def test_huber_and_smooth_l1_by_hand() -> None:
    # d = ±0.3, c = 0.4: sqrt(0.09 + 0.16) - 0.4 = 0.1
    pred = torch.tensor([[0.3, -0.3, 0.0]])
    target = torch.zeros(1, 3)
    huber = elementwise_loss(pred, target, "huber", huber_c=0.4, huber_schedule="constant")
    smooth = elementwise_loss(pred, target, "smooth_l1", huber_c=0.4, huber_schedule="constant")
    torch.testing.assert_close(huber, torch.tensor([[0.08, 0.08, 0.0]]))
    torch.testing.assert_close(smooth, torch.tensor([[0.2, 0.2, 0.0]]))


@pytest.mark.parametrize("loss_type", ["huber", "smooth_l1"])
def test_pseudo_huber_coincides_with_torch_in_both_regimes(loss_type: str) -> None:
    c = 0.5
    torch_loss = F.huber_loss if loss_type == "huber" else F.smooth_l1_loss
    kwargs = {"delta": c} if loss_type == "huber" else {"beta": c}
    # |d| << c: both quadratic, ours = 2 x torch's (d² for huber, d²/c for smooth_l1).
    small = torch.tensor([1e-3, -2e-3, 5e-3])
    ours = elementwise_loss(small, torch.zeros(3), loss_type, huber_c=c, huber_schedule="constant")
    theirs = torch_loss(small, torch.zeros(3), reduction="none", **kwargs)
    torch.testing.assert_close(ours, 2 * theirs, rtol=1e-4, atol=0)
    # |d| >> c: both linear, ours with twice torch's slope (2c for huber, 2 for smooth_l1).
    large = torch.tensor([200.0, -300.0], requires_grad=True)
    ours_grad = torch.autograd.grad(
        elementwise_loss(
            large, torch.zeros(2), loss_type, huber_c=c, huber_schedule="constant"
        ).sum(),
        large,
    )[0]
    theirs_grad = torch.autograd.grad(
        torch_loss(large, torch.zeros(2), reduction="sum", **kwargs), large
    )[0]
    torch.testing.assert_close(ours_grad, 2 * theirs_grad, rtol=1e-5, atol=0)


def test_loss_is_float32_for_half_precision_predictions() -> None:
    pred = randn(1, 2, 2, 2).to(torch.bfloat16)
    assert elementwise_loss(pred, torch.zeros_like(pred), "huber").dtype == torch.float32


# --- Huber threshold schedules ---------------------------------------------------------------


def test_exponential_schedule_matches_simpletuner_formula() -> None:
    c, T = 0.1, 1000
    t = torch.tensor([0, 250, 500, 999])
    alpha = -math.log(c) / T  # SimpleTuner: exp(-alpha * t)
    expected = torch.tensor([math.exp(-alpha * v) for v in t.tolist()])
    got = scheduled_huber_c("exponential", c, timesteps=t, num_train_timesteps=T)
    torch.testing.assert_close(got, expected)
    assert got[0].item() == pytest.approx(1.0)
    assert got[2].item() == pytest.approx(math.sqrt(c))  # halfway: c^(1/2)


def test_snr_schedule_matches_simpletuner_ddpm_formula() -> None:
    c = 0.1
    t = torch.tensor([0, 100, 500, 999])
    acp = SD15.alphas_cumprod[t]
    sigmas = ((1.0 - acp) / acp) ** 0.5  # SimpleTuner's compute_scheduled_huber_c, DDPM branch
    expected = (1 - c) / (1 + sigmas) ** 2 + c
    got = scheduled_huber_c("snr", c, snr=ddpm_snr(t, SD15.alphas_cumprod))
    torch.testing.assert_close(got, expected.float())
    # hand values: SNR 1 -> σ 1 -> (1-c)/4 + c; SNR 0 -> c; SNR inf -> 1
    ends = scheduled_huber_c("snr", c, snr=torch.tensor([1.0, 0.0, math.inf]))
    torch.testing.assert_close(ends, torch.tensor([0.9 / 4 + 0.1, 0.1, 1.0]))


def test_flow_matching_snr_schedule_matches_simpletuner_flow_branch() -> None:
    c = 0.2
    t = torch.tensor([0.0, 250.0, 500.0, 1000.0])  # σ·1000
    s = t / 1000
    sigmas = ((1.0 - s) / (s + 0.0001)) ** 0.5  # SimpleTuner's flow-matching branch
    expected = (1 - c) / (1 + sigmas) ** 2 + c
    got = scheduled_huber_c("snr", c, snr=flow_matching_huber_snr(t, 1000))
    torch.testing.assert_close(got, expected)


def test_scheduled_threshold_is_per_sample() -> None:
    # sample 0 at t=0 (c=1), sample 1 at t=T (c=0.25); d = 0.75 everywhere
    pred = torch.full((2, 1, 2, 2), 0.75)
    got = elementwise_loss(
        pred,
        torch.zeros_like(pred),
        "huber",
        huber_c=0.25,
        huber_schedule="exponential",
        timesteps=torch.tensor([0, 1000]),
        num_train_timesteps=1000,
    )
    for i, c in enumerate((1.0, 0.25)):
        expected = 2 * c * (math.sqrt(0.75**2 + c**2) - c)
        torch.testing.assert_close(got[i], torch.full((1, 2, 2), expected))


def test_schedules_that_need_inputs_say_so() -> None:
    with pytest.raises(ValueError, match="timesteps"):
        scheduled_huber_c("exponential", 0.1)
    with pytest.raises(ValueError, match="snr"):
        scheduled_huber_c("snr", 0.1)
    with pytest.raises(ValueError, match="huber_schedule"):
        scheduled_huber_c("cosine", 0.1)


# --- Min-SNR ---------------------------------------------------------------------------------


def test_min_snr_weights_by_hand() -> None:
    snr = torch.tensor([0.25, 1.0, 5.0, 25.0])
    torch.testing.assert_close(
        min_snr_weights(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 1.0, 0.2])
    )
    torch.testing.assert_close(
        min_snr_weights(snr, 5.0, "v_prediction"),
        torch.tensor([0.25 / 1.25, 0.5, 5 / 6, 5 / 26]),
    )
    torch.testing.assert_close(
        min_snr_weights(snr, 5.0, "sample"), torch.tensor([0.25, 1.0, 5.0, 5.0])
    )


def test_min_snr_weights_at_zero_snr_are_finite() -> None:
    zero = torch.tensor([0.0])
    assert min_snr_weights(zero, 5.0, "epsilon").item() == 1.0
    assert min_snr_weights(zero, 5.0, "v_prediction").item() == 0.0


def test_min_snr_weights_match_diffusers_recipe() -> None:
    t = torch.tensor([1, 10, 100, 400, 800, 999])
    snr = compute_snr(SD15, t)
    capped = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    torch.testing.assert_close(min_snr_weights(snr, 5.0, "epsilon"), capped / snr)
    torch.testing.assert_close(min_snr_weights(snr, 5.0, "v_prediction"), capped / (snr + 1))


def test_min_snr_rejects_flow_matching() -> None:
    with pytest.raises(ValueError, match="flow_matching"):
        min_snr_weights(torch.ones(2), 5.0, "flow_matching")


def test_soft_min_snr_matches_simpletuner_compute_snr() -> None:
    t = torch.tensor([1, 50, 300, 700, 999])
    sigma = (1.0 - SD15.alphas_cumprod[t]) ** 0.5  # SimpleTuner's compute_snr(use_soft_min=True)
    for sigma_data in (1.0, 0.5):
        expected = (sigma * sigma_data) ** 2 / (sigma**2 + sigma_data**2) ** 2
        got = soft_min_snr(compute_snr(SD15, t), sigma_data)
        torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-7)
    # hand value: SNR 1 -> σ² = 1/2 -> (1/2) / (3/2)² = 2/9
    assert soft_min_snr(torch.tensor([1.0]), 1.0).item() == pytest.approx(2 / 9)


# --- masks and reduction ---------------------------------------------------------------------


def test_masked_mean_broadcasts_over_channels() -> None:
    loss = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    mask = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])  # (B, H, W)
    got = masked_mean(loss, mask)
    expected0 = (loss[0] * mask[0]).sum() / loss[0].numel()  # zeros count in the mean
    torch.testing.assert_close(got, torch.stack([expected0, loss[1].mean()]))
    torch.testing.assert_close(masked_mean(loss, mask.unsqueeze(1)), got)


def test_zero_mask_gives_zero_not_nan() -> None:
    loss = torch.ones(2, 4, 3, 3)
    got = masked_mean(loss, torch.zeros(2, 1, 3, 3))
    assert torch.equal(got, torch.zeros(2))
    assert reduce_loss(loss, torch.ones(2), torch.zeros(2, 3, 3)).item() == 0.0


def test_mask_of_wrong_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="latent size"):
        masked_mean(torch.ones(2, 4, 8, 8), torch.ones(2, 1, 16, 16))


def test_reduce_loss_is_weighted_batch_mean_of_sample_means() -> None:
    loss = torch.stack([torch.full((2, 2, 2), 1.0), torch.full((2, 2, 2), 3.0)])
    assert reduce_loss(loss).item() == pytest.approx(2.0)
    # (2·1 + 0.5·3) / 2
    assert reduce_loss(loss, torch.tensor([2.0, 0.5])).item() == pytest.approx(1.75)


def test_loss_masks_from_conditioning_images() -> None:
    pixels = -torch.ones(1, 3, 4, 4)
    pixels[:, :, :, :2] = 1.0  # left half white
    pixels[:, :, :2, 2:] = 0.0  # top-right quarter grey
    mask = loss_mask_from_conditioning(pixels, (2, 2), "mask")
    torch.testing.assert_close(mask, torch.tensor([[[[1.0, 0.5], [1.0, 0.0]]]]))
    seg = -torch.ones(1, 3, 4, 4)
    seg[:, 0, 0, 3] = 1.0  # one red pixel in the top-right block
    torch.testing.assert_close(
        loss_mask_from_conditioning(seg, (2, 2), "segmentation"),
        torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]]),
    )


# --- options and the whole loss --------------------------------------------------------------


def test_config_defaults() -> None:
    config = LossConfig.from_options(DEFAULTS)
    assert (config.loss_type, config.snr_gamma, config.snr_weight) == ("l2", None, 1.0)
    assert config.ignored == ()
    assert LossConfig.from_options({**DEFAULTS, "snr_gamma": 0.0}).snr_gamma is None


def test_flow_matching_accepts_and_ignores_min_snr_options() -> None:
    options = {**DEFAULTS, "snr_gamma": 5.0, "use_soft_min_snr": True, "snr_weight": 2.0}
    config = LossConfig.from_options(options, flow_matching=True)
    assert config.snr_gamma is None and not config.use_soft_min_snr
    assert config.snr_weight == 1.0
    assert config.ignored == ("snr_gamma", "snr_weight", "use_soft_min_snr")
    ddpm = LossConfig.from_options(options)
    assert (ddpm.snr_gamma, ddpm.use_soft_min_snr, ddpm.snr_weight) == (5.0, True, 1.0)
    assert ddpm.ignored == ("snr_weight",)  # SimpleTuner: snr_weight only without Min-SNR
    soft_alone = LossConfig.from_options({**DEFAULTS, "use_soft_min_snr": True})
    assert soft_alone.ignored == ("use_soft_min_snr",)


def test_config_rejects_zero_huber_threshold() -> None:
    with pytest.raises(ValueError, match="huber_c"):
        LossConfig.from_options({**DEFAULTS, "loss_type": "huber", "huber_c": 0.0})
    LossConfig.from_options({**DEFAULTS, "huber_c": 0.0})  # unused by l2: fine


def test_compute_loss_min_snr_epsilon_matches_diffusers_recipe() -> None:
    pred, target = randn(3, 4, 2, 2, seed=3), randn(3, 4, 2, 2, seed=4)
    t = torch.tensor([10, 500, 990])
    snr = compute_snr(SD15, t)
    config = LossConfig.from_options({**DEFAULTS, "snr_gamma": 5.0})
    got = compute_loss(config, pred, target, timesteps=t, snr=snr, prediction_type="epsilon")
    weights = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0] / snr
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=[1, 2, 3])
    torch.testing.assert_close(got, (per_sample * weights).mean())


def test_compute_loss_soft_min_snr_v_prediction() -> None:
    pred, target = randn(2, 4, 2, 2, seed=5), randn(2, 4, 2, 2, seed=6)
    t = torch.tensor([100, 900])
    snr = compute_snr(SD15, t)
    options = {**DEFAULTS, "snr_gamma": 5.0, "use_soft_min_snr": True}
    options["soft_min_snr_sigma_data"] = 0.5
    config = LossConfig.from_options(options)
    got = compute_loss(config, pred, target, timesteps=t, snr=snr, prediction_type="v_prediction")
    sigma2 = 1.0 - SD15.alphas_cumprod[t].float()
    soft = sigma2 * 0.25 / (sigma2 + 0.25) ** 2  # all below 5: min(soft, 5) = soft
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=[1, 2, 3])
    torch.testing.assert_close(got, (per_sample * soft / (soft + 1)).mean())


def test_compute_loss_snr_weight_without_min_snr() -> None:
    pred, target = randn(2, 4, 2, 2, seed=7), torch.zeros(2, 4, 2, 2)
    config = LossConfig.from_options({**DEFAULTS, "snr_weight": 2.0})
    got = compute_loss(
        config, pred, target, timesteps=torch.tensor([1, 2]), snr=None, prediction_type="epsilon"
    )
    torch.testing.assert_close(got, 2.0 * (pred**2).mean())


def test_compute_loss_flow_matching_ignores_weighting() -> None:
    pred, target = randn(2, 4, 2, 2, seed=8), randn(2, 4, 2, 2, seed=9)
    config = LossConfig(snr_gamma=5.0, snr_weight=3.0)  # built by hand: compute_loss still ignores
    got = compute_loss(
        config,
        pred,
        target,
        timesteps=torch.tensor([100.0, 900.0]),
        snr=None,
        prediction_type="flow_matching",
    )
    torch.testing.assert_close(got, F.mse_loss(pred, target))


def test_compute_loss_scheduled_huber_with_mask_matches_simpletuner_loop() -> None:
    pred, target = randn(2, 4, 4, 4, seed=10), randn(2, 4, 4, 4, seed=11)
    t = torch.tensor([50, 800])
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1.0
    config = LossConfig.from_options({**DEFAULTS, "loss_type": "huber", "huber_c": 0.1})
    snr = compute_snr(SD15, t)
    got = compute_loss(
        config, pred, target, timesteps=t, snr=snr, prediction_type="epsilon", mask=mask
    )
    # SimpleTuner: per-sample huber_c from sqrt((1-ᾱ)/ᾱ), loss x mask, mean per sample, mean.
    losses = []
    for i in range(2):
        acp = SD15.alphas_cumprod[t[i]]
        sigma = ((1 - acp) / acp) ** 0.5
        c = ((1 - 0.1) / (1 + sigma) ** 2 + 0.1).item()
        sample = 2 * c * (torch.sqrt((pred[i] - target[i]) ** 2 + c**2) - c)
        losses.append((sample * mask[i]).mean())
    torch.testing.assert_close(got, torch.stack(losses).mean())


def test_compute_loss_needs_snr_where_it_is_used() -> None:
    config = LossConfig.from_options({**DEFAULTS, "snr_gamma": 5.0})
    with pytest.raises(ValueError, match="snr_gamma"):
        compute_loss(
            config,
            torch.ones(1, 1, 1, 1),
            torch.zeros(1, 1, 1, 1),
            timesteps=torch.tensor([3]),
            snr=None,
            prediction_type="epsilon",
        )

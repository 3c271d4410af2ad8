"""diff2flow: train an epsilon- or v-prediction model against the flow-matching target.

With ᾱ the cumulative alpha of the sample's timestep, a DDPM model sees
x_t = sqrt(ᾱ)·x0 + sqrt(1-ᾱ)·ε. Its prediction is turned into the implied pair (x̂0, ε̂):

- epsilon: ε̂ = pred, x̂0 = x_t/sqrt(ᾱ) - sqrt(1/ᾱ - 1)·ε̂
- v_prediction: x̂0 = sqrt(ᾱ)·x_t - sqrt(1-ᾱ)·v, ε̂ = sqrt(ᾱ)·v + sqrt(1-ᾱ)·x_t

and the flow vector field is ε̂ - x̂0, regressed on the flow target noise - latents with a plain
mean squared error (no Min-SNR weighting, no Huber), as SimpleTuner's
``DiffusionToFlowBridge`` and its diff2flow loss branch do. ``diff2flow_enabled`` alone changes
nothing (SimpleTuner only builds the bridge); ``diff2flow_loss`` switches the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from st_ray.train.losses import reduce_loss

PREDICTION_TYPES = ("epsilon", "v_prediction")


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, torch.float32).reshape(-1, *([1] * (like.ndim - 1)))


def prediction_to_flow(
    pred: torch.Tensor,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """The flow vector field ε̂ - x̂0 implied by a DDPM prediction (float32)."""
    alpha = _per_sample(alphas_cumprod.to(timesteps.device)[timesteps.long()], noisy)
    pred, noisy = pred.float(), noisy.float()
    if prediction_type == "epsilon":
        eps = pred
        x0 = noisy / alpha.sqrt() - (1.0 / alpha - 1.0).sqrt() * eps
    elif prediction_type == "v_prediction":
        x0 = alpha.sqrt() * noisy - (1.0 - alpha).sqrt() * pred
        eps = alpha.sqrt() * pred + (1.0 - alpha).sqrt() * noisy
    else:
        raise ValueError(
            f"diff2flow converts {' or '.join(PREDICTION_TYPES)} predictions, "
            f"not {prediction_type!r}"
        )
    return eps - x0


def flow_loss(
    pred: torch.Tensor,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    *,
    target_flow: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between the converted prediction and ``target_flow`` (noise - x0;
    for regularisation data the base model's prediction converted the same way); weighted
    per latent pixel by a loss ``mask`` (losses.masked_mean) when given."""
    flow = prediction_to_flow(pred, noisy, timesteps, alphas_cumprod, prediction_type)
    if mask is None:
        return torch.nn.functional.mse_loss(flow, target_flow.float())
    return reduce_loss((flow - target_flow.float()) ** 2, mask=mask)


def active(options: Mapping[str, Any]) -> bool:
    """Whether the loss is the diff2flow one (both options on, as in SimpleTuner)."""
    return bool(options.get("diff2flow_enabled")) and bool(options.get("diff2flow_loss"))


def option_problems(
    options: Mapping[str, Any], *, prediction_type: str, family: str
) -> list[tuple[str, str]]:
    """Why the diff2flow options cannot apply to this run: (option, message) pairs."""
    problems = []
    if options.get("diff2flow_loss") and not options.get("diff2flow_enabled"):
        problems.append(("diff2flow_loss", "needs diff2flow_enabled: true"))
    for key in ("diff2flow_enabled", "diff2flow_loss"):
        if options.get(key) and prediction_type not in PREDICTION_TYPES:
            problems.append(
                (
                    key,
                    f"only applies to epsilon or v_prediction models; {family} predicts "
                    f"{prediction_type!r}, so its target already is "
                    + (
                        "the flow-matching one"
                        if prediction_type == "flow_matching"
                        else "not convertible"
                    ),
                )
            )
    if active(options):
        if options.get("loss_type", "l2") != "l2":
            problems.append(
                (
                    "loss_type",
                    f"'{options['loss_type']}' would be ignored: the diff2flow loss is the mean "
                    "squared error against the flow target (as in SimpleTuner); use 'l2'",
                )
            )
        if options.get("snr_gamma"):
            problems.append(
                (
                    "snr_gamma",
                    "would be ignored: the diff2flow loss is not Min-SNR weighted (as in "
                    "SimpleTuner); unset it",
                )
            )
    return problems

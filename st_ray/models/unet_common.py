"""The UNet families' denoiser call (SD 1.x, 2.x, SDXL).

SD 1.x and 2.x condition the UNet on the prompt states alone; SDXL adds its pooled embedding
and size/crop time ids through ``added_cond_kwargs`` (built in ``sdxl.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models.family import Prediction, conditioning, unwrap

if TYPE_CHECKING:
    import torch


def call_unet(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One UNet forward pass as the SD/SDXL pipelines make it (no CFG batch doubling)."""
    dtype = unwrap(denoiser).dtype
    # ControlNet training: the control image goes to the ControlNet beside the UNet.
    control = {"controlnet_cond": batch["controlnet_cond"]} if "controlnet_cond" in batch else {}
    pred = denoiser(
        noisy_latents.to(dtype),
        timesteps.to(noisy_latents.device),
        encoder_hidden_states=conditioning(batch, "prompt_embeds", noisy_latents, dtype),
        added_cond_kwargs=added_cond_kwargs,
        return_dict=False,
        **control,
    )[0]
    return pred.to(noisy_latents.dtype)


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """SD 1.x/2.x: cross-attention on ``prompt_embeds`` only."""
    return Prediction(call_unet(denoiser, noisy_latents, timesteps, batch))

"""SDXL: UNet with two CLIP text encoders, pooled embeddings and size/crop time ids."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import text_encoders as te
from st_ray.models.family import UNET_BLOCKS, FamilySpec, Prediction, conditioning, unwrap
from st_ray.models.unet_common import call_unet

if TYPE_CHECKING:
    import numpy as np
    import torch

SLOTS = (
    # CLIP ViT-L; absent from the refiner, which conditions on OpenCLIP bigG alone.
    te.Slot("text_encoder", "tokenizer", "CLIPTextModel", optional=True),
    te.Slot("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection"),
)

SPEC = FamilySpec(
    name="sdxl",
    denoiser="unet",
    denoiser_class="UNet2DConditionModel",
    controlnet_class="ControlNetModel",
    hidden_blocks=UNET_BLOCKS,
    prediction_types=("epsilon", "v_prediction"),
    flavours={
        "base-1.0": "stabilityai/stable-diffusion-xl-base-1.0",
        "refiner-1.0": "stabilityai/stable-diffusion-xl-refiner-1.0",
    },
    pixel_granularity=8,
    text_encoders=2,
    pipeline_class="StableDiffusionXLPipeline",
    text_slots=SLOTS,
)


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, 77, D1+D2): both encoders' penultimate hidden states side by side;
    pooled_prompt_embeds (B, P): text_encoder_2's projected pooled output.

    The size/crop time ids are per image and live in the image cache.
    """
    import torch

    with te.inference_mode():
        names = [n for n in ("text_encoder", "text_encoder_2") if n in encoders]
        outs = [te.clip_encode(encoders, n, prompts) for n in names]
        return {
            "prompt_embeds": te.to_numpy(torch.cat([o.hidden_states[-2] for o in outs], dim=-1)),
            "pooled_prompt_embeds": te.to_numpy(outs[-1].text_embeds),
        }


def time_ids(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B, 6) micro-conditioning per sample: original (h, w), crop (top, left), target (h, w),
    in pixels, concatenated in the order of the SDXL pipeline's ``_get_add_time_ids``."""
    import torch

    keys = ("original_size", "crop_top_left", "target_size")
    return torch.cat([batch[k] for k in keys], dim=1)


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """Cross-attention on ``prompt_embeds`` plus ``added_cond_kwargs``: the pooled embedding
    and the size/crop time ids."""
    unet = unwrap(denoiser)
    pooled = conditioning(batch, "pooled_prompt_embeds", noisy_latents, unet.dtype)
    ids = time_ids(batch).to(device=noisy_latents.device, dtype=unet.dtype)
    # The pipeline's own check: a refiner UNet (aesthetic-score ids, 5 of them) would otherwise
    # fail deep inside the forward pass with a bare shape error.
    expected = unet.add_embedding.linear_1.in_features
    if unet.config.addition_time_embed_dim * ids.shape[1] + pooled.shape[1] != expected:
        raise ValueError(
            f"this UNet expects {expected} added-conditioning values, not 6 size/crop time ids "
            f"plus a {pooled.shape[1]}-wide pooled embedding: only SDXL base-style UNets can be "
            "trained (refiner training is not implemented by st_ray)"
        )
    added = {"text_embeds": pooled, "time_ids": ids}
    return Prediction(call_unet(denoiser, noisy_latents, timesteps, batch, added_cond_kwargs=added))

"""Kolors: an SDXL-style UNet conditioned on ChatGLM3 (one encoder, 4096 wide), SDXL time ids,
epsilon prediction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import chatglm_text
from st_ray.models import text_encoders as te
from st_ray.models.family import UNET_BLOCKS, FamilySpec, Prediction, conditioning, unwrap
from st_ray.models.sdxl import time_ids
from st_ray.models.unet_common import call_unet

if TYPE_CHECKING:
    import numpy as np
    import torch

SPEC = FamilySpec(
    name="kolors",
    denoiser="unet",
    denoiser_class="UNet2DConditionModel",
    hidden_blocks=UNET_BLOCKS,
    prediction_types=("epsilon",),
    # SimpleTuner's mapping (the Kwai-Kolors/Kolors-diffusers weights, repackaged).
    flavours={"1.0": "terminusresearch/kwai-kolors-1.0"},
    pixel_granularity=8,
    text_encoders=1,
    pipeline_class="KolorsPipeline",
)

# SimpleTuner trains Kolors on 77 ChatGLM tokens; the pipeline accepts up to 256.
DEFAULT_LENGTH = 77


def max_length(options: Mapping[str, Any]) -> int:
    return te.t5_max_length(options, DEFAULT_LENGTH)


def load_text_encoders(
    model_path: str, *, device: torch.device, dtype: torch.dtype, options: Mapping[str, Any]
) -> te.TextEncoders:
    return chatglm_text.load(model_path, device=device, dtype=dtype, options=options)


def validation_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"max_sequence_length": max_length(options)}


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, L, D): ChatGLM's penultimate hidden states (left-padded, L =
    tokenizer_max_length or 77); pooled_prompt_embeds (B, D): the last token's final state.
    The size/crop time ids are per image and live in the image cache, as for SDXL."""
    with te.inference_mode():
        embeds, pooled = chatglm_text.encode(
            encoders, "text_encoder", prompts, max_length=max_length(options)
        )
        return {"prompt_embeds": te.to_numpy(embeds), "pooled_prompt_embeds": te.to_numpy(pooled)}


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """The KolorsPipeline's UNet call: ChatGLM states (projected to the cross-attention width
    inside the UNet by its text_proj), the pooled state and the SDXL size/crop time ids."""
    unet = unwrap(denoiser)
    pooled = conditioning(batch, "pooled_prompt_embeds", noisy_latents, unet.dtype)
    ids = time_ids(batch).to(device=noisy_latents.device, dtype=unet.dtype)
    expected = unet.add_embedding.linear_1.in_features
    if unet.config.addition_time_embed_dim * ids.shape[1] + pooled.shape[1] != expected:
        raise ValueError(
            f"this UNet expects {expected} added-conditioning values, not 6 size/crop time ids "
            f"plus a {pooled.shape[1]}-wide ChatGLM pooled state: it is not a Kolors UNet"
        )
    added = {"text_embeds": pooled, "time_ids": ids}
    return Prediction(call_unet(denoiser, noisy_latents, timesteps, batch, added_cond_kwargs=added))

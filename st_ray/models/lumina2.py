"""Lumina-Image 2.0: unified next-DiT on Flux-style 16-channel VAE latents, Gemma 2 text encoder
with a system prompt, flow matching in reversed time (t = 1 is the image)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import gemma_text
from st_ray.models import text_encoders as te
from st_ray.models.family import ATTENTION_TARGETS, FamilySpec, Prediction, conditioning, unwrap

if TYPE_CHECKING:
    import numpy as np
    import torch

SPEC = FamilySpec(
    name="lumina2",
    token_routing_refused=(
        "lumina2's blocks take one joint text + image sequence with per-sample padded lengths "
        "and batched rotary tables, so TREAD cannot route its image tokens generically"
    ),
    denoiser="transformer",
    denoiser_class="Lumina2Transformer2DModel",
    prediction_types=("flow_matching",),
    flavours={
        "2.0": "Alpha-VLLM/Lumina-Image-2.0",
        "neta-lumina": "terminusresearch/neta-lumina-v1",
    },
    pixel_granularity=16,  # VAE 8x, patch size 2
    text_encoders=1,
    pipeline_class="Lumina2Pipeline",
    latent_channels=16,
    # SimpleTuner's preset: to_qkv only exists once QKV projections are fused.
    lora_targets=(*ATTENTION_TARGETS, "to_qkv"),
)

# Lumina2Pipeline's (and SimpleTuner's) system prompt, joined to each caption by
# " <Prompt Start> ".
SYSTEM_PROMPT = (
    "You are an assistant designed to generate superior images with the superior degree of "
    "image-text alignment based on textual prompts or user prompts."
)
GEMMA_LENGTH = 256  # the pipeline's and SimpleTuner's default tokenizer_max_length


def max_length(options: Mapping[str, Any]) -> int:
    return te.t5_max_length(options, GEMMA_LENGTH)


def load_text_encoders(
    model_path: str, *, device: torch.device, dtype: torch.dtype, options: Mapping[str, Any]
) -> te.TextEncoders:
    return gemma_text.load(model_path, device=device, dtype=dtype, options=options)


def validation_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"max_sequence_length": max_length(options), "system_prompt": SYSTEM_PROMPT}


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, L, D): Gemma's penultimate hidden state for "<system prompt>
    <Prompt Start> <caption>" padded to L tokens, and prompt_attention_mask (B, L), as
    Lumina2Pipeline.encode_prompt builds them."""
    texts = [f"{SYSTEM_PROMPT} <Prompt Start> {p}" for p in prompts]
    with te.inference_mode():
        embeds, mask = gemma_text.encode(
            encoders, texts, max_length=max_length(options), hidden_layer=-2
        )
        return {"prompt_embeds": te.to_numpy(embeds), "prompt_attention_mask": te.to_numpy(mask)}


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """Lumina2Pipeline's transformer call. Lumina runs time the other way (t = 0 is noise), so
    the transformer gets 1 - sigma and predicts image - noise; negated, as the pipeline does
    before its scheduler step, it is the noise - image velocity the other families predict."""
    import torch

    dtype = unwrap(denoiser).dtype
    sigma_time = 1.0 - timesteps.to(noisy_latents.device, torch.float32) / 1000.0
    pred = denoiser(
        hidden_states=noisy_latents.to(dtype),
        timestep=sigma_time,
        encoder_hidden_states=conditioning(batch, "prompt_embeds", noisy_latents, dtype),
        encoder_attention_mask=batch["prompt_attention_mask"].to(noisy_latents.device),
        return_dict=False,
    )[0]
    return Prediction((-pred).to(noisy_latents.dtype))

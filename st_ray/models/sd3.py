"""Stable Diffusion 3.x: flow-matching MMDiT, two CLIP encoders plus T5."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.config.schema import opt
from st_ray.models import text_encoders as te
from st_ray.models.family import (
    JOINT_DIT_BLOCKS,
    FamilySpec,
    Prediction,
    TokenRouting,
    conditioning,
    unwrap,
)
from st_ray.models.slider_targets import SLIDER_ATTENTION_TARGETS

if TYPE_CHECKING:
    import numpy as np
    import torch

SLOTS = (
    te.Slot("text_encoder", "tokenizer", "CLIPTextModelWithProjection"),  # CLIP-L
    te.Slot("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection"),  # OpenCLIP bigG
    te.Slot("text_encoder_3", "tokenizer_3", "T5EncoderModel"),
)

OPTIONS = (
    opt(
        "sd3_clip_uncond_behaviour",
        str,
        "empty_string",
        "SD3: how the CLIP embeddings of empty (dropped) captions are made: encode an empty "
        "string, or use zeros.",
        choices=("empty_string", "zero"),
        caches=("text",),
    ),
    opt(
        "sd3_t5_uncond_behaviour",
        str,
        None,
        "SD3: same as sd3_clip_uncond_behaviour for the T5 embeddings; unset follows the CLIP "
        "setting.",
        choices=(None, "empty_string", "zero"),
        caches=("text",),
    ),
)

SPEC = FamilySpec(
    # SimpleTuner's SLIDER_LORA_TARGET for sd3: the image stream's attention only.
    slider_lora_targets=SLIDER_ATTENTION_TARGETS,
    name="sd3",
    denoiser="transformer",
    denoiser_class="SD3Transformer2DModel",
    hidden_blocks=JOINT_DIT_BLOCKS,
    token_routing=TokenRouting(),
    prediction_types=("flow_matching",),
    flavours={
        "medium": "stabilityai/stable-diffusion-3.5-medium",
        "large": "stabilityai/stable-diffusion-3.5-large",
    },
    pixel_granularity=16,
    text_encoders=3,
    pipeline_class="StableDiffusion3Pipeline",
    text_slots=SLOTS,
    latent_channels=16,
    options=OPTIONS,
)

# SimpleTuner's T5 length for SD3 (the diffusers pipeline defaults to 256 at inference).
T5_LENGTH = 154


def validation_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"max_sequence_length": te.t5_max_length(options, T5_LENGTH)}


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, 77+L, D_t5): both CLIPs' penultimate states side by side, zero-padded
    to T5's width, followed by the T5 states; pooled_prompt_embeds (B, P1+P2): both CLIPs'
    projected pooled outputs."""
    import torch

    with te.inference_mode():
        clip = [te.clip_encode(encoders, n, prompts) for n in ("text_encoder", "text_encoder_2")]
        t5, mask = te.t5_encode(
            encoders,
            "text_encoder_3",
            prompts,
            max_length=te.t5_max_length(options, T5_LENGTH),
            masked=False,
        )
        t5 = te.apply_t5_padding(t5, mask, options)
        states = torch.cat([out.hidden_states[-2] for out in clip], dim=-1)
        states = torch.nn.functional.pad(states, (0, t5.shape[-1] - states.shape[-1]))
        pooled = torch.cat([o.text_embeds for o in clip], dim=-1)
        clip_zero, t5_zero = uncond_zeroed(options)
        empty = torch.tensor([not p for p in prompts], device=states.device)
        if clip_zero:  # empty (dropped) captions: zeros instead of the encoded ""
            states, pooled = states * ~empty[:, None, None], pooled * ~empty[:, None]
        if t5_zero:
            t5 = t5 * ~empty[:, None, None]
        return {
            "prompt_embeds": te.to_numpy(torch.cat([states, t5], dim=-2)),
            "pooled_prompt_embeds": te.to_numpy(pooled),
        }


def uncond_zeroed(options: Mapping[str, Any]) -> tuple[bool, bool]:
    """(CLIP, T5): whether sd3_clip_uncond_behaviour / sd3_t5_uncond_behaviour (unset: the
    CLIP setting) make empty captions zeros."""
    clip = options.get("sd3_clip_uncond_behaviour") or "empty_string"
    t5 = options.get("sd3_t5_uncond_behaviour") or clip
    return clip == "zero", t5 == "zero"


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """The StableDiffusion3Pipeline's transformer call; the timestep is sigma * 1000 as given."""
    dtype = unwrap(denoiser).dtype
    pred = denoiser(
        hidden_states=noisy_latents.to(dtype),
        timestep=timesteps.to(noisy_latents.device),
        encoder_hidden_states=conditioning(batch, "prompt_embeds", noisy_latents, dtype),
        pooled_projections=conditioning(batch, "pooled_prompt_embeds", noisy_latents, dtype),
        return_dict=False,
    )[0]
    return Prediction(pred.to(noisy_latents.dtype))

"""Flux.1: flow-matching MMDiT transformer, CLIP + T5 text encoders, packed 2x2 latents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import text_encoders as te
from st_ray.models.family import FamilySpec

if TYPE_CHECKING:
    import numpy as np
    import torch

SPEC = FamilySpec(
    name="flux",
    denoiser="transformer",
    prediction_types=("flow_matching",),
    flavours={
        "dev": "black-forest-labs/FLUX.1-dev",
        "schnell": "black-forest-labs/FLUX.1-schnell",
        "krea": "black-forest-labs/FLUX.1-Krea-dev",
    },
    pixel_granularity=16,
    text_encoders=2,
    pipeline_class="FluxPipeline",
)

SLOTS = (
    te.Slot("text_encoder", "tokenizer", "CLIPTextModel"),  # CLIP ViT-L, pooled output only
    te.Slot("text_encoder_2", "tokenizer_2", "T5EncoderModel"),
)


def t5_length(options: Mapping[str, Any]) -> int:
    """T5 sequence length: tokenizer_max_length if set, else 256 for schnell and 512 otherwise
    (the lengths the checkpoints were trained with and SimpleTuner uses)."""
    flavour = options.get("model_flavour") or SPEC.default_flavour
    return te.t5_max_length(options, 256 if flavour == "schnell" else 512)


def load_text_encoders(
    model_path: str, *, device: torch.device, dtype: torch.dtype, options: Mapping[str, Any]
) -> te.TextEncoders:
    return te.load(model_path, SLOTS, device=device, dtype=dtype, options=options)


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, L, D_t5) from unmasked T5, pooled_prompt_embeds (B, D_clip) from the
    CLIP pooled output and the T5 attention_mask (B, L) for flux_attention_masked_training."""
    with te.inference_mode():
        pooled = te.clip_encode(encoders, "text_encoder", prompts).pooler_output
        embeds, mask = te.t5_encode(
            encoders, "text_encoder_2", prompts, max_length=t5_length(options), masked=False
        )
        return {
            "prompt_embeds": te.to_numpy(te.apply_t5_padding(embeds, mask, options)),
            "pooled_prompt_embeds": te.to_numpy(pooled),
            "attention_mask": te.to_numpy(mask),
        }

"""SDXL: UNet with two CLIP text encoders, pooled embeddings and size/crop time ids."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import text_encoders as te
from st_ray.models.family import FamilySpec

if TYPE_CHECKING:
    import numpy as np
    import torch

SPEC = FamilySpec(
    name="sdxl",
    denoiser="unet",
    prediction_types=("epsilon", "v_prediction"),
    flavours={
        "base-1.0": "stabilityai/stable-diffusion-xl-base-1.0",
        "refiner-1.0": "stabilityai/stable-diffusion-xl-refiner-1.0",
    },
    pixel_granularity=8,
    text_encoders=2,
    pipeline_class="StableDiffusionXLPipeline",
)

SLOTS = (
    # CLIP ViT-L; absent from the refiner, which conditions on OpenCLIP bigG alone.
    te.Slot("text_encoder", "tokenizer", "CLIPTextModel", optional=True),
    te.Slot("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection"),
)


def load_text_encoders(
    model_path: str, *, device: torch.device, dtype: torch.dtype, options: Mapping[str, Any]
) -> te.TextEncoders:
    return te.load(model_path, SLOTS, device=device, dtype=dtype, options=options)


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

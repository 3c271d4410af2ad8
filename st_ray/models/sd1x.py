"""Stable Diffusion 1.x: UNet, one CLIP text encoder, epsilon prediction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import text_encoders as te
from st_ray.models.family import UNET_BLOCKS, FamilySpec
from st_ray.models.unet_common import predict as predict

if TYPE_CHECKING:
    import numpy as np

SLOTS = (te.Slot("text_encoder", "tokenizer", "CLIPTextModel"),)

SPEC = FamilySpec(
    name="sd1x",
    denoiser="unet",
    denoiser_class="UNet2DConditionModel",
    controlnet_class="ControlNetModel",
    hidden_blocks=UNET_BLOCKS,
    prediction_types=("epsilon", "v_prediction"),
    flavours={"1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
    pixel_granularity=8,
    text_encoders=1,
    pipeline_class="StableDiffusionPipeline",
    text_slots=SLOTS,
)


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, 77, D): the CLIP last hidden state (the pipeline with clip_skip None).

    SD 1.x and 2.x condition the UNet the same way; only the checkpoints' encoders differ.
    """
    with te.inference_mode():
        out = te.clip_encode(encoders, "text_encoder", prompts)
        return {"prompt_embeds": te.to_numpy(out.last_hidden_state)}

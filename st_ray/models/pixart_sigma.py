"""PixArt-Sigma: DiT transformer conditioned on T5, epsilon prediction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import text_encoders as te
from st_ray.models.family import (
    DIT_BLOCKS,
    FamilySpec,
    Prediction,
    TokenRouting,
    conditioning,
    unwrap,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

SLOTS = (te.Slot("text_encoder", "tokenizer", "T5EncoderModel"),)

SPEC = FamilySpec(
    name="pixart_sigma",
    denoiser="transformer",
    denoiser_class="PixArtTransformer2DModel",
    hidden_blocks=DIT_BLOCKS,
    token_routing=TokenRouting(),
    prediction_types=("epsilon",),
    flavours={
        "600M-1024": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
        "600M-512": "PixArt-alpha/PixArt-Sigma-XL-2-512-MS",
        "900M-1024-v0.6": "terminusresearch/pixart-900m-1024-ft-v0.6",
    },
    pixel_granularity=16,
    text_encoders=1,
    pipeline_class="PixArtSigmaPipeline",
    text_slots=SLOTS,
)

T5_LENGTH = 300  # the pipeline's and SimpleTuner's PixArt-Sigma length


def validation_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"max_sequence_length": te.t5_max_length(options, T5_LENGTH)}


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, L, D) from T5 run with its attention mask, and prompt_attention_mask
    (B, L). Captions are lower-cased and stripped, the pipeline's clean_caption=False path."""
    with te.inference_mode():
        embeds, mask = te.t5_encode(
            encoders,
            "text_encoder",
            [p.lower().strip() for p in prompts],
            max_length=te.t5_max_length(options, T5_LENGTH),
            masked=True,
        )
        return {
            "prompt_embeds": te.to_numpy(te.apply_t5_padding(embeds, mask, options)),
            "prompt_attention_mask": te.to_numpy(mask),
        }


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """The PixArtSigmaPipeline's transformer call: T5 states with their mask, no resolution /
    aspect-ratio conditioning (Sigma has none). A learned-sigma transformer predicts epsilon
    and variance channels; like the pipeline, only the epsilon half is returned."""
    transformer = unwrap(denoiser)
    dtype, channels = transformer.dtype, noisy_latents.shape[1]
    pred = denoiser(
        noisy_latents.to(dtype),
        encoder_hidden_states=conditioning(batch, "prompt_embeds", noisy_latents, dtype),
        encoder_attention_mask=batch["prompt_attention_mask"].to(noisy_latents.device),
        timestep=timesteps.to(noisy_latents.device),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )[0]
    if transformer.config.out_channels == 2 * channels:
        pred = pred[:, :channels]
    return Prediction(pred.to(noisy_latents.dtype))

"""DeepFloyd IF stage I: a pixel-space UNet conditioned on T5, epsilon prediction with a
learned variance (the UNet outputs epsilon and variance channels; training uses the first).

There is no VAE (``vae_class=None``): the cache holds the images themselves, in [-1, 1] at the
stage's resolution (64 px for stage I). Stage II (super-resolution) flavours are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import text_encoders as te
from st_ray.models.family import (
    UNET_BLOCKS,
    FamilySpec,
    Prediction,
    conditioning,
    unwrap,
)
from st_ray.models.slider_targets import SLIDER_ATTENTION_TARGETS

if TYPE_CHECKING:
    import numpy as np
    import torch

_STAGE_II = (
    "stage II super-resolution conditions on the upscaled stage-I image and a noise-level "
    "class label, which st_ray's caches do not hold; train a stage I flavour"
)

SLOTS = (te.Slot("text_encoder", "tokenizer", "T5EncoderModel"),)

SPEC = FamilySpec(
    # SimpleTuner's SLIDER_LORA_TARGET for deepfloyd: the image stream's attention only.
    slider_lora_targets=SLIDER_ATTENTION_TARGETS,
    name="deepfloyd",
    denoiser="unet",
    denoiser_class="UNet2DConditionModel",
    hidden_blocks=UNET_BLOCKS,
    prediction_types=("epsilon", "v_prediction"),
    # SimpleTuner's flavour names (stage I only).
    flavours={
        "i-xlarge-4.3b": "DeepFloyd/IF-I-XL-v1.0",
        "i-large-900m": "DeepFloyd/IF-I-L-v1.0",
        "i-medium-400m": "DeepFloyd/IF-I-M-v1.0",
    },
    pixel_granularity=8,  # three 2x downsamplings in the stage I UNets
    text_encoders=1,
    pipeline_class="IFPipeline",
    text_slots=SLOTS,
    latent_downscale=1,
    latent_channels=3,
    vae_class=None,
    refused_flavours={"ii-medium-450m": _STAGE_II, "ii-large-1.2b": _STAGE_II},
)

T5_LENGTH = 77  # IF's T5 was trained with 77 tokens (the pipeline's fixed max_length)


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, 77, D): T5 run with its attention mask on the lower-cased, stripped
    prompt (IFPipeline.encode_prompt with clean_caption=False, as SimpleTuner encodes)."""
    with te.inference_mode():
        embeds, mask = te.t5_encode(
            encoders,
            "text_encoder",
            [p.lower().strip() for p in prompts],
            max_length=te.t5_max_length(options, T5_LENGTH),
            masked=True,
        )
        return {"prompt_embeds": te.to_numpy(te.apply_t5_padding(embeds, mask, options))}


def validation_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    # Prompts were cached without the bs4/ftfy caption cleaning the pipeline defaults to.
    return {"clean_caption": False}


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """The IFPipeline's UNet call on noisy pixels; of the learned-variance output only the
    epsilon (or v) half is returned, as the pipeline's sampler uses it."""
    unet = unwrap(denoiser)
    dtype, channels = unet.dtype, noisy_latents.shape[1]
    pred = denoiser(
        noisy_latents.to(dtype),
        timesteps.to(noisy_latents.device),
        encoder_hidden_states=conditioning(batch, "prompt_embeds", noisy_latents, dtype),
        return_dict=False,
    )[0]
    if unet.config.out_channels == 2 * channels:
        pred = pred[:, :channels]
    return Prediction(pred.to(noisy_latents.dtype))

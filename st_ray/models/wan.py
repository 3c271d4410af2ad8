"""Wan 2.x: flow-matching video DiT (WanTransformer3DModel) on AutoencoderKLWan latents (8x
spatial, 4x temporal), UMT5 text encoder.

Clips are cached as (16, (F - 1) / 4 + 1, H / 8, W / 8) latents normalised with the VAE
config's ``latents_mean`` / ``latents_std`` (what WanPipeline inverts before decoding); an image
dataset trains as one-frame clips. Text-to-video flavours train; the image-to-video and Wan 2.2
two-expert flavours are listed and refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import text_encoders as te
from st_ray.models.family import FamilySpec, Prediction, conditioning, unwrap

if TYPE_CHECKING:
    import numpy as np
    import torch

_I2V = "image-to-video (first-frame conditioning with a CLIP image encoder) is not implemented yet"
_EXPERTS = (
    "Wan 2.2's two-expert (high-/low-noise transformer) layout is not implemented yet; "
    "train a Wan 2.1 flavour"
)
_TI2V = (
    "the Wan 2.2 TI2V 5B layout (48-channel 16x VAE, per-token timesteps) is not implemented yet"
)

SPEC = FamilySpec(
    name="wan",
    denoiser="transformer",
    denoiser_class="WanTransformer3DModel",
    hidden_blocks=(("blocks", 0),),
    prediction_types=("flow_matching",),
    # SimpleTuner's flavours; the first is its default.
    flavours={
        "t2v-480p-1.3b-2.1": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "t2v-480p-14b-2.1": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    },
    refused_flavours={
        "i2v-480p-14b-2.1": _I2V,
        "i2v-720p-14b-2.1": _I2V,
        "flf2v-720p-14b-2.1": _I2V,
        "t2v-a14b-2.2": _EXPERTS,
        "i2v-a14b-2.2": _EXPERTS,
        "ti2v-5b-2.2": _TI2V,
    },
    pixel_granularity=16,  # VAE 8x, patch (1, 2, 2)
    text_encoders=1,
    pipeline_class="WanPipeline",
    text_slots=(te.Slot("text_encoder", "tokenizer", "UMT5EncoderModel"),),
    latent_channels=16,
    vae_class="AutoencoderKLWan",
    frame_step=4,
)

# The prompt length Wan was trained with (WanPipeline's __call__ default).
T5_LENGTH = 512


# Frames of a validation clip when validation_num_video_frames is unset (about a second).
VALIDATION_FRAMES = 17


def validation_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "max_sequence_length": te.t5_max_length(options, T5_LENGTH),
        "num_frames": int(options.get("validation_num_video_frames") or VALIDATION_FRAMES),
    }


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, L, D): WanPipeline.encode_prompt's cleaned prompts through masked
    UMT5, with the states after each prompt's last token zeroed."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    with te.inference_mode():
        embeds, mask = te.t5_encode(
            encoders,
            "text_encoder",
            [prompt_clean(p) for p in prompts],
            max_length=te.t5_max_length(options, T5_LENGTH),
            masked=True,
        )
        # The pipeline cuts each prompt's states at its length and pads with zeros.
        embeds = embeds * mask.unsqueeze(-1).to(embeds.dtype)
        return {"prompt_embeds": te.to_numpy(embeds)}


def encode_latents(
    vae: Any, pixels: torch.Tensor, noise_like: Callable[[tuple[int, ...]], torch.Tensor]
) -> torch.Tensor:
    """(B, 3, F, H, W) clips (or (B, 3, H, W) images, as one frame) -> (B, 16, f, h, w): a
    posterior sample (mean + std * fixed noise), normalised as (z - latents_mean) / latents_std."""
    import torch

    if pixels.ndim == 4:
        pixels = pixels.unsqueeze(2)
    dist = vae.encode(pixels).latent_dist
    noise = noise_like(tuple(dist.mean.shape[1:])).to(dist.mean.device, dist.mean.dtype)
    sample = dist.mean + dist.std * noise
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(sample)
    std = torch.tensor(vae.config.latents_std).view(shape).to(sample)
    return (sample - mean) / std


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """WanPipeline's transformer call: (B, 16, f, h, w) latents, timestep sigma * 1000."""
    dtype = unwrap(denoiser).dtype
    pred = denoiser(
        hidden_states=noisy_latents.to(dtype),
        timestep=timesteps.to(noisy_latents.device),
        encoder_hidden_states=conditioning(batch, "prompt_embeds", noisy_latents, dtype),
        return_dict=False,
    )[0]
    return Prediction(pred.to(noisy_latents.dtype))

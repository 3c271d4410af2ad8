"""Qwen-Image: flow-matching MMDiT on packed 2x2 latents of the Qwen (Wan-style) VAE,
conditioned on Qwen2.5-VL hidden states."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import qwen_text
from st_ray.models import text_encoders as te
from st_ray.models.family import (
    JOINT_DIT_BLOCKS,
    FamilySpec,
    Prediction,
    TokenRouting,
    conditioning,
    unwrap,
)
from st_ray.models.latent_stats import denormalised_pixels, normalised_latents

if TYPE_CHECKING:
    import numpy as np
    import torch

SPEC = FamilySpec(
    name="qwen_image",
    denoiser="transformer",
    denoiser_class="QwenImageTransformer2DModel",
    hidden_blocks=JOINT_DIT_BLOCKS,
    token_routing=TokenRouting(rotary="image_first"),
    prediction_types=("flow_matching",),
    flavours={"v1.0": "Qwen/Qwen-Image"},
    pixel_granularity=16,  # 8x VAE, 2x2 patches
    text_encoders=1,
    pipeline_class="QwenImagePipeline",
    latent_channels=16,
    vae_class="AutoencoderKLQwenImage",
    refused_flavours={
        "edit-v1": "Qwen-Image-Edit trains on (source image, edit) pairs: st_ray has no "
        "conditioning-image datasets yet",
        "edit-v2": "Qwen-Image-Edit-2509 trains on (source images, edit) pairs: st_ray has no "
        "conditioning-image datasets yet",
    },
)

# The text length cached and sampled with: the pipeline's __call__ default max_sequence_length.
TEXT_LENGTH = 512


def text_length(options: Mapping[str, Any]) -> int:
    return te.t5_max_length(options, TEXT_LENGTH)


def load_text_encoders(
    model_path: str, *, device: torch.device, dtype: torch.dtype, options: Mapping[str, Any]
) -> te.TextEncoders:
    return qwen_text.load(model_path, device=device, dtype=dtype, options=options)


def validation_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"max_sequence_length": text_length(options)}


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, L, D) and prompt_embeds_mask (B, L), L = tokenizer_max_length or
    512: the pipeline's encode_prompt, zero-padded to L."""
    with te.inference_mode():
        embeds, mask = qwen_text.encode(encoders, prompts, length=text_length(options))
        return {"prompt_embeds": te.to_numpy(embeds), "prompt_embeds_mask": te.to_numpy(mask)}


def encode_latents(
    vae: Any, pixels: torch.Tensor, noise_like: Callable[[tuple[int, ...]], torch.Tensor]
) -> torch.Tensor:
    return normalised_latents(vae, pixels, noise_like)


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    return denormalised_pixels(vae, latents)


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """The QwenImagePipeline's transformer call: latents packed 2x2 into tokens with their
    one-frame shape for RoPE, sigma (timesteps / 1000) as the timestep, the text states with
    their padding mask."""
    from diffusers import QwenImagePipeline

    transformer = unwrap(denoiser)
    if transformer.config.guidance_embeds:
        raise ValueError(
            "this Qwen-Image transformer is guidance-distilled (guidance_embeds true); st_ray "
            "trains the released, non-distilled Qwen-Image checkpoints only"
        )
    dtype, device = transformer.dtype, noisy_latents.device
    b, c, h, w = noisy_latents.shape
    tokens = QwenImagePipeline._pack_latents(noisy_latents.to(dtype), b, c, h, w)
    pred = denoiser(
        hidden_states=tokens,
        timestep=timesteps.to(device=device, dtype=dtype) / 1000,
        encoder_hidden_states=conditioning(batch, "prompt_embeds", noisy_latents, dtype),
        encoder_hidden_states_mask=batch["prompt_embeds_mask"].to(device=device),
        img_shapes=[[(1, h // 2, w // 2)]] * b,
        return_dict=False,
    )[0]
    # _unpack_latents takes pixel sizes and the VAE factor; latent sizes with factor 1 agree.
    unpacked = QwenImagePipeline._unpack_latents(pred, h, w, 1)
    return Prediction(unpacked.squeeze(2).to(noisy_latents.dtype))

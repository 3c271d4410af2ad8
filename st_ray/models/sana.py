"""Sana: linear-attention DiT on 32x DC-AE latents, Gemma 2 text encoder, flow matching."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from st_ray.config.schema import opt
from st_ray.models import gemma_text
from st_ray.models import text_encoders as te
from st_ray.models.family import DIT_BLOCKS, FamilySpec, Prediction, conditioning, unwrap

if TYPE_CHECKING:
    import numpy as np
    import torch

# SimpleTuner's default system prompt for Sana's Gemma text encoder.
COMPLEX_HUMAN_INSTRUCTION = "\n".join(
    [
        "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual "
        "descriptions suitable for image generation. Evaluate the level of detail in the user "
        "prompt:",
        "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, "
        "textures, and spatial relationships to create vivid and concrete scenes.",
        "- Do not add detail that is not in the original prompt! Do not mention colors if the "
        "User Prompt does not!",
        "- If the prompt is already detailed, refine and enhance the existing details slightly "
        "without overcomplicating.",
        "- If the prompt contains explicit material, do not remove this information from the "
        "output, which would damage the performance of downstream classifiers.",
        "Here are examples of how to transform or refine prompts:",
        "- User Prompt: A cat sleeping -> Enhanced: A cat sleeping peacefully, showcasing the joy "
        "of pet ownership. Cute floof kitty cat gatto.",
        "- User Prompt: A busy city street -> Enhanced: A bustling city street scene featuring a "
        "crowd of people.",
        "Please generate only the enhanced description for the prompt below and avoid including "
        "any additional commentary or evaluations:",
        "User Prompt: ",
    ]
)
OPTIONS = (
    opt(
        "sana_complex_human_instruction",
        str,
        COMPLEX_HUMAN_INSTRUCTION,
        "Sana: system prompt prepended to every caption before the Gemma text encoder, as "
        "during Sana's own training. Set it to an empty string to encode captions alone.",
        caches=("text",),
    ),
)

SPEC = FamilySpec(
    name="sana",
    denoiser="transformer",
    denoiser_class="SanaTransformer2DModel",
    hidden_blocks=DIT_BLOCKS,
    token_routing_refused=(
        "sana's blocks run a convolution over the image tokens laid out as an H x W map "
        "(Mix-FFN), which a routed token subset no longer forms, so TREAD cannot route them"
    ),
    prediction_types=("flow_matching",),
    # SimpleTuner's flavours; the first is its default.
    flavours={
        "sana1.5-4.8b-1024": "Efficient-Large-Model/SANA1.5_4.8B_1024px_diffusers",
        "sana1.5-1.6b-1024": "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers",
        "sana1.0-1.6b-2048": "Efficient-Large-Model/Sana_1600M_2Kpx_BF16_diffusers",
        "sana1.0-1.6b-1024": "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers",
        "sana1.0-600m-1024": "Efficient-Large-Model/Sana_600M_1024px_diffusers",
        "sana1.0-600m-512": "Efficient-Large-Model/Sana_600M_512px_diffusers",
    },
    pixel_granularity=32,  # DC-AE f32, patch size 1
    text_encoders=1,
    pipeline_class="SanaPipeline",
    latent_downscale=32,
    latent_channels=32,
    vae_class="AutoencoderDC",
    options=OPTIONS,
)

GEMMA_LENGTH = 300  # the pipeline's and SimpleTuner's prompt length (after the instruction)


def max_length(options: Mapping[str, Any]) -> int:
    return te.t5_max_length(options, GEMMA_LENGTH)


def instruction(options: Mapping[str, Any]) -> str:
    """The complex human instruction prefixed to captions ('' disables it)."""
    return options.get("sana_complex_human_instruction") or ""


def load_text_encoders(
    model_path: str, *, device: torch.device, dtype: torch.dtype, options: Mapping[str, Any]
) -> te.TextEncoders:
    return gemma_text.load(model_path, device=device, dtype=dtype, options=options)


def validation_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    """Prompts at validation are encoded like the training captions; resolution binning is off
    so images come out at exactly the requested (granularity-rounded) size."""
    chi = instruction(options)
    return {
        "max_sequence_length": max_length(options),
        "complex_human_instruction": chi.split("\n") if chi else None,
        "use_resolution_binning": False,
    }


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, L, D) and prompt_attention_mask (B, L), L = the max length (300).

    As SanaPipeline.encode_prompt (clean_caption=False): captions lower-cased and stripped,
    then prefixed with the instruction; the Gemma length grows by the instruction's tokens,
    and only <bos> plus the last L - 1 positions (the caption and its padding) are kept.
    """
    length = max_length(options)
    texts = [p.lower().strip() for p in prompts]
    chi = instruction(options)
    total = length
    if chi:
        texts = [chi + t for t in texts]
        total = gemma_text.token_count(encoders, chi) + length - 2
    keep = [0, *range(-length + 1, 0)]
    with te.inference_mode():
        embeds, mask = gemma_text.encode(encoders, texts, max_length=total, hidden_layer=-1)
        return {
            "prompt_embeds": te.to_numpy(embeds[:, keep]),
            "prompt_attention_mask": te.to_numpy(mask[:, keep]),
        }


def encode_latents(
    vae: Any, pixels: torch.Tensor, noise_like: Callable[[tuple[int, ...]], torch.Tensor]
) -> torch.Tensor:
    """DC-AE latents are deterministic: ``encode(x).latent * scaling_factor`` (the pipeline
    divides by scaling_factor before decoding); ``noise_like`` is unused."""
    return vae.encode(pixels).latent * float(vae.config.scaling_factor)


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents / float(vae.config.scaling_factor)).sample


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """SanaPipeline's transformer call: Gemma states with their mask, the timestep (sigma *
    1000) times the config's timestep_scale. A learned-sigma output keeps its first half."""
    transformer = unwrap(denoiser)
    dtype, channels = transformer.dtype, noisy_latents.shape[1]
    scale = float(getattr(transformer.config, "timestep_scale", 1.0) or 1.0)
    pred = denoiser(
        noisy_latents.to(dtype),
        encoder_hidden_states=conditioning(batch, "prompt_embeds", noisy_latents, dtype),
        encoder_attention_mask=batch["prompt_attention_mask"].to(noisy_latents.device),
        timestep=timesteps.to(noisy_latents.device) * scale,
        return_dict=False,
    )[0]
    if transformer.config.out_channels == 2 * channels:
        pred = pred[:, :channels]
    return Prediction(pred.to(noisy_latents.dtype))

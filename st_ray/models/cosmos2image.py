"""Cosmos-Predict2 text-to-image: CosmosTransformer3DModel on one-frame Wan VAE latents,
conditioned on T5.

The pipeline samples with EDM preconditioning: with t = sigma / (sigma + 1), it feeds the
transformer c_in * state = (1 - t) * (x0 + sigma * n) = (1 - t) * x0 + t * n with timestep t in
[0, 1], and takes c_skip * state + c_out * F = (1 - t) * x0 + t * n - t * F as the denoised
image. That is x0 when F = n - x0: the transformer is a rectified-flow velocity
model in t. st_ray therefore trains it with its flow-matching loop (sigma = t); ``predict``
turns the loop's sigma * 1000 back into t. SimpleTuner instead samples EDM log-uniform sigmas
with an EDM loss weight: the optimum is the same, the distribution of t and the weighting
differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import text_encoders as te
from st_ray.models.family import (
    FamilySpec,
    Prediction,
    conditioning,
    load_pretrained_denoiser,
    unwrap,
)
from st_ray.models.latent_stats import denormalised_pixels, normalised_latents

if TYPE_CHECKING:
    import numpy as np
    import torch

SLOTS = (te.Slot("text_encoder", "tokenizer", "T5EncoderModel"),)

SPEC = FamilySpec(
    name="cosmos2image",
    token_routing_refused=(
        "cosmos2image's blocks take 3-D rotary tables and extra learned position embeddings "
        "over the whole token grid, which st_ray's router does not slice, so TREAD cannot "
        "route them"
    ),
    denoiser="transformer",
    denoiser_class="CosmosTransformer3DModel",
    prediction_types=("flow_matching",),
    # SimpleTuner's flavour names.
    flavours={
        "2b": "nvidia/Cosmos-Predict2-2B-Text2Image",
        "14b": "nvidia/Cosmos-Predict2-14B-Text2Image",
    },
    pixel_granularity=16,  # 8x Wan VAE, 2x2 patches
    text_encoders=1,
    pipeline_class="Cosmos2TextToImagePipeline",
    text_slots=SLOTS,
    latent_channels=16,
    vae_class="AutoencoderKLWan",
)

T5_LENGTH = 512  # the pipeline's max_sequence_length default
# The pipeline's sigma_data (fixed in its __init__): latents are normalised, then scaled by it.
SIGMA_DATA = 1.0
# Validation samplers that run the pipeline's EDM loop correctly: its own Euler scheduler.
_SAMPLERS = (None, "euler")


class PassThroughSafetyChecker:
    """Stands in for NVIDIA's CosmosSafetyChecker (package cosmos_guardrail, which downloads
    the guardrail models): the pipeline refuses to run without a checker, and st_ray's
    validation images show what the model learned, as for the SD safety checker it disables.
    Only the methods the pipeline calls."""

    def to(self, *args: Any, **kwargs: Any) -> PassThroughSafetyChecker:
        return self

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames: Any) -> Any:
        return frames


def ensure_padding_mask_resize() -> None:
    """diffusers' CosmosTransformer3DModel resizes its padding mask with
    ``torchvision.transforms`` and leaves the name undefined without torchvision (no CPU
    build of it matches torch here). Without torchvision, give that module the one function it
    calls: tensor nearest resize, which torchvision implements as this same
    ``F.interpolate(mode="nearest")``."""
    from types import SimpleNamespace

    import diffusers.models.transformers.transformer_cosmos as cosmos
    import torch.nn.functional as F
    from diffusers.utils import is_torchvision_available

    if is_torchvision_available() or hasattr(cosmos, "transforms"):
        return

    def resize(image: torch.Tensor, size: list[int], interpolation: str) -> torch.Tensor:
        return F.interpolate(image, size=size, mode=interpolation)

    cosmos.transforms = SimpleNamespace(
        functional=SimpleNamespace(resize=resize),
        InterpolationMode=SimpleNamespace(NEAREST="nearest"),
    )


def load_denoiser(
    model_path: str, *, dtype: torch.dtype, device: torch.device, options: Mapping[str, Any]
) -> torch.nn.Module:
    ensure_padding_mask_resize()
    return load_pretrained_denoiser(
        SPEC.denoiser, SPEC.denoiser_class, model_path, dtype=dtype, device=device, options=options
    )


def validation_components(options: Mapping[str, Any]) -> dict[str, Any]:
    """The pass-through safety checker (and the padding-mask resize the transformer needs)."""
    ensure_padding_mask_resize()
    sampler = options.get("validation_noise_scheduler")
    if sampler not in _SAMPLERS:
        raise ValueError(
            f"validation_noise_scheduler={sampler!r} cannot sample cosmos2image: its pipeline "
            "runs an EDM loop through its own Euler scheduler; leave the option unset or use "
            "'euler'"
        )
    return {"safety_checker": PassThroughSafetyChecker()}


def validation_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"max_sequence_length": te.t5_max_length(options, T5_LENGTH)}


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, L, D), L = tokenizer_max_length or 512: T5 run with its attention
    mask, padding positions zeroed (the pipeline's _get_t5_prompt_embeds; the transformer gets
    no text mask)."""
    with te.inference_mode():
        embeds, mask = te.t5_encode(
            encoders,
            "text_encoder",
            prompts,
            max_length=te.t5_max_length(options, T5_LENGTH),
            masked=True,
        )
        return {"prompt_embeds": te.to_numpy(embeds * mask.unsqueeze(-1).to(embeds.dtype))}


def encode_latents(
    vae: Any, pixels: torch.Tensor, noise_like: Callable[[tuple[int, ...]], torch.Tensor]
) -> torch.Tensor:
    return normalised_latents(vae, pixels, noise_like, scale=SIGMA_DATA)


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    return denormalised_pixels(vae, latents, scale=SIGMA_DATA)


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """The Cosmos2TextToImagePipeline's transformer call on the one-frame latents: t =
    timesteps / 1000 (the loop's sigma) as the timestep, the zero padding mask, the T5 states.
    Returns the velocity noise - x0, in (B, C, H, W)."""
    ensure_padding_mask_resize()
    transformer = unwrap(denoiser)
    dtype, device = transformer.dtype, noisy_latents.device
    b, _, h, w = noisy_latents.shape
    pred = denoiser(
        hidden_states=noisy_latents.unsqueeze(2).to(dtype),
        timestep=(timesteps.to(device=device, dtype=dtype) / 1000).expand(b),
        encoder_hidden_states=conditioning(batch, "prompt_embeds", noisy_latents, dtype),
        # The pipeline's mask is at pixel size; the transformer resizes it to the latents'.
        padding_mask=noisy_latents.new_zeros(1, 1, h, w, dtype=dtype),
        return_dict=False,
    )[0]
    return Prediction(pred.squeeze(2).to(noisy_latents.dtype))

"""Flux.1: flow-matching MMDiT transformer, CLIP + T5 text encoders, packed 2x2 latents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.config.schema import opt
from st_ray.models import text_encoders as te
from st_ray.models.family import (
    FamilySpec,
    Prediction,
    TokenRouting,
    conditioning,
    load_pretrained_denoiser,
    unwrap,
)
from st_ray.models.slider_targets import SLIDER_ATTENTION_TARGETS

if TYPE_CHECKING:
    import numpy as np
    import torch

SLOTS = (
    te.Slot("text_encoder", "tokenizer", "CLIPTextModel"),  # CLIP ViT-L, pooled output only
    te.Slot("text_encoder_2", "tokenizer_2", "T5EncoderModel"),
)


# flux_lora_target presets (SimpleTuner's get_lora_target_layers). to_qkv / add_qkv_proj only
# exist once QKV projections are fused; PEFT skips names that match nothing as long as one does.
_MMDIT = ("to_k", "to_q", "to_v", "to_out.0", "to_qkv")
_CONTEXT = ("add_k_proj", "add_q_proj", "add_v_proj", "add_qkv_proj", "to_add_out")
_ALL = _MMDIT + _CONTEXT
_CONTEXT_FFS = ("ff_context.net.0.proj", "ff_context.net.2")
_FFS = ("ff.net.0.proj", "ff.net.2", *_CONTEXT_FFS, "proj_mlp", "proj_out")
LORA_PRESETS: dict[str, tuple[str, ...]] = {
    "mmdit": _MMDIT,
    "context": _CONTEXT,
    "context+ffs": _CONTEXT + _CONTEXT_FFS,
    "all": _ALL,
    "all+ffs": _ALL + _FFS,
    "all+ffs+embedder": ("x_embedder", *_ALL, *_FFS),
    "ai-toolkit": _ALL + _FFS + ("norm.linear", "norm1.linear", "norm1_context.linear"),
    # TheLastBen's small-file presets; they need the real model's 38 single blocks.
    "tiny": ("single_transformer_blocks.7.proj_out", "single_transformer_blocks.20.proj_out"),
    "nano": ("single_transformer_blocks.7.proj_out",),
}

_NO_CONTROLNET = "ControlNet training is not supported by st_ray yet"

OPTIONS = (
    opt(
        "flux_attention_masked_training",
        bool,
        False,
        "Flux: mask padding tokens of the T5 prompt in attention so the model does not learn "
        "from them. Needs text embeddings cached with their attention masks.",
    ),
    opt(
        "flux_fast_schedule",
        bool,
        False,
        "Flux: experimental timestep schedule aimed at few-step (schnell-style) models.",
        unsupported="Flux's experimental fast schedule is not implemented by st_ray yet",
    ),
    opt(
        "flux_guidance_mode",
        str,
        "constant",
        "Flux: what the guidance embedding is fed while training: flux_guidance_value every "
        "step ('constant') or a random value between flux_guidance_min and max.",
        choices=("constant", "random-range"),
    ),
    opt(
        "flux_guidance_value",
        float,
        1.0,
        "Flux: value fed to the guidance-distilled model's guidance embedding in 'constant' mode.",
        minimum=0,
    ),
    opt(
        "flux_guidance_min",
        float,
        0.0,
        "Flux: lower bound of the guidance value in 'random-range' mode.",
        minimum=0,
    ),
    opt(
        "flux_guidance_max",
        float,
        4.0,
        "Flux: upper bound of the guidance value in 'random-range' mode.",
        minimum=0,
    ),
    opt(
        "flux_lora_target",
        str,
        "all",
        "Flux: preset of layers that get LoRA adapters, from attention only ('mmdit', "
        "'context') up to attention plus feed-forward ('all+ffs'); 'tiny' and 'nano' train "
        "very few layers.",
        choices=(
            "mmdit",
            "context",
            "context+ffs",
            "all",
            "all+ffs",
            "ai-toolkit",
            "tiny",
            "nano",
            "controlnet",
            "all+ffs+embedder",
            "all+ffs+embedder+controlnet",
        ),
        unsupported_values={
            "controlnet": _NO_CONTROLNET,
            "all+ffs+embedder+controlnet": _NO_CONTROLNET,
        },
    ),
)

SPEC = FamilySpec(
    # SimpleTuner's SLIDER_LORA_TARGET for flux: the image stream's attention only.
    slider_lora_targets=(*SLIDER_ATTENTION_TARGETS, "to_qkv"),
    name="flux",
    denoiser="transformer",
    denoiser_class="FluxTransformer2DModel",
    hidden_blocks=(("transformer_blocks", 1), ("single_transformer_blocks", 1)),
    token_routing=TokenRouting(rotary="text_first", layer_keys=("num_layers", "num_single_layers")),
    prediction_types=("flow_matching",),
    flavours={
        "dev": "black-forest-labs/FLUX.1-dev",
        "schnell": "black-forest-labs/FLUX.1-schnell",
        "krea": "black-forest-labs/FLUX.1-Krea-dev",
    },
    pixel_granularity=16,
    text_encoders=2,
    pipeline_class="FluxPipeline",
    text_slots=SLOTS,
    latent_channels=16,
    lora_presets=LORA_PRESETS,
    lora_preset_option="flux_lora_target",
    options=OPTIONS,
)


def option_problems(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An empty random-range guidance interval."""
    low, high = options.get("flux_guidance_min"), options.get("flux_guidance_max")
    if low is not None and high is not None and low > high:
        return [
            (
                "flux_guidance_min",
                f"is {low}, greater than flux_guidance_max ({high}); the range would be empty",
            )
        ]
    return []


def t5_length(options: Mapping[str, Any]) -> int:
    """T5 sequence length: tokenizer_max_length if set, else 256 for schnell and 512 otherwise
    (the lengths the checkpoints were trained with and SimpleTuner uses)."""
    flavour = options.get("model_flavour") or SPEC.default_flavour
    return te.t5_max_length(options, 256 if flavour == "schnell" else 512)


def validation_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"max_sequence_length": t5_length(options)}


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


# The one attention_mechanism the config accepts whose diffusers backend refuses a mask (the
# flash-attn and sage kernels, which refuse one too, are not integrated by st_ray).
_MASKLESS_KERNELS = frozenset({"native-flash"})


def load_denoiser(
    model_path: str, *, dtype: torch.dtype, device: torch.device, options: Mapping[str, Any]
) -> torch.nn.Module:
    """The transformer. diffusers' Flux attention hands a mask given in joint_attention_kwargs
    on to the kernel, so flux_attention_masked_training only needs a kernel that takes one:
    refused here rather than at the first step."""
    kernel = options.get("attention_mechanism")
    if options.get("flux_attention_masked_training") and kernel in _MASKLESS_KERNELS:
        raise ValueError(
            f"flux_attention_masked_training needs an attention kernel that takes a mask, and "
            f"attention_mechanism '{kernel}' does not: use 'diffusers' (PyTorch SDPA), "
            "native-efficient, native-math or cudnn"
        )
    return load_pretrained_denoiser(
        "transformer", SPEC.denoiser_class, model_path, dtype=dtype, device=device, options=options
    )


def guidance(
    options: Mapping[str, Any], batch_size: int, generator: torch.Generator | None
) -> torch.Tensor:
    """(B,) values for the guidance embedding of guidance-distilled checkpoints: the pipeline
    feeds its guidance_scale; training feeds flux_guidance_value ('constant') or one uniform
    draw per sample from [flux_guidance_min, flux_guidance_max] ('random-range')."""
    import torch

    mode = options.get("flux_guidance_mode", "constant")
    if mode == "constant":
        return torch.full((batch_size,), float(options.get("flux_guidance_value", 1.0)))
    if mode != "random-range":
        raise ValueError(f"unknown flux_guidance_mode {mode!r}")
    if generator is None:
        raise ValueError("flux_guidance_mode 'random-range' needs a torch.Generator")
    low, high = float(options["flux_guidance_min"]), float(options["flux_guidance_max"])
    if high < low:
        raise ValueError(f"flux_guidance_max {high} is below flux_guidance_min {low}")
    draws = torch.rand(batch_size, generator=generator, device=generator.device).cpu()
    return low + (high - low) * draws


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """The FluxPipeline's transformer call: latents packed 2x2 into tokens with their (0, row,
    col) position ids, text position ids all zero, sigma (timesteps / 1000) as the timestep;
    with flux_attention_masked_training the T5 padding tokens are masked out as keys."""
    import torch
    from diffusers import FluxPipeline

    transformer = unwrap(denoiser)
    dtype, device = transformer.dtype, noisy_latents.device
    b, c, h, w = noisy_latents.shape
    embeds = conditioning(batch, "prompt_embeds", noisy_latents, dtype)
    tokens = FluxPipeline._pack_latents(noisy_latents.to(dtype), b, c, h, w)
    kwargs: dict[str, Any] = {}
    if options.get("flux_attention_masked_training"):
        # Keys are [text, image] in the joint attention; image tokens are never padding.
        text = batch["attention_mask"].to(device=device, dtype=torch.bool)
        keys = torch.cat([text, text.new_ones(b, tokens.shape[1])], dim=1)
        kwargs["joint_attention_kwargs"] = {"attention_mask": keys[:, None, None, :]}
    if transformer.config.guidance_embeds:
        gen = generator if generator is not None else batch.get("generator")
        kwargs["guidance"] = guidance(options, b, gen).to(device)
    pred = denoiser(
        hidden_states=tokens,
        # The transformer multiplies timestep and guidance by 1000 itself.
        timestep=timesteps.to(device=device, dtype=torch.float32) / 1000,
        pooled_projections=conditioning(batch, "pooled_prompt_embeds", noisy_latents, dtype),
        encoder_hidden_states=embeds,
        txt_ids=torch.zeros(embeds.shape[1], 3, device=device),
        img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, torch.float32),
        return_dict=False,
        **kwargs,
    )[0]
    # _unpack_latents takes pixel sizes and the VAE factor; latent sizes with factor 1 agree.
    return Prediction(FluxPipeline._unpack_latents(pred, h, w, 1).to(noisy_latents.dtype))

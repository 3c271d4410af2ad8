"""AuraFlow: MMDiT + single-stream DiT on SDXL-VAE latents, UMT5 (Pile-T5) text encoder, flow
matching with the time in [0, 1]."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_ray.models import text_encoders as te
from st_ray.models.family import (
    FamilySpec,
    Prediction,
    conditioning,
    unwrap,
)
from st_ray.models.slider_targets import SLIDER_ATTENTION_TARGETS

if TYPE_CHECKING:
    import numpy as np
    import torch

SPEC = FamilySpec(
    # SimpleTuner's SLIDER_LORA_TARGET for auraflow: the image stream's attention only.
    slider_lora_targets=(*SLIDER_ATTENTION_TARGETS, "to_qkv"),
    name="auraflow",
    token_routing_refused=(
        "auraflow's single-stream blocks take register, text and image tokens as one sequence "
        "with no separate image-token argument, so TREAD cannot route its image tokens "
        "generically"
    ),
    denoiser="transformer",
    denoiser_class="AuraFlowTransformer2DModel",
    prediction_types=("flow_matching",),
    # SimpleTuner's flavours; v0.3 is its default.
    flavours={
        "v0.3": "terminusresearch/auraflow-v0.3",
        "v0.2": "fal/AuraFlow-v0.2",
        "v0.1": "fal/AuraFlow",
        "pony": "purplesmartai/pony-v7-base",
    },
    pixel_granularity=16,  # VAE 8x, patch size 2
    text_encoders=1,
    pipeline_class="AuraFlowPipeline",
    # SimpleTuner's preset: the joint attention's image and text projections (to_qkv only
    # exists once projections are fused).
    lora_targets=(
        "to_k",
        "to_q",
        "to_v",
        "to_out.0",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_add_out",
        "to_qkv",
    ),
)


def max_length(options: Mapping[str, Any]) -> int:
    """tokenizer_max_length, else the length the flavour was trained with (SimpleTuner's
    defaults: 120 tokens, 768 for Pony v7)."""
    flavour = options.get("model_flavour") or SPEC.default_flavour
    return te.t5_max_length(options, 768 if flavour == "pony" else 120)


def _source(model_path: str, subfolder: str, options: Mapping[str, Any], weights: bool) -> dict:
    """from_pretrained arguments; pretrained_t5_model_name_or_path reads the encoder (and its
    tokenizer) from elsewhere: a pipeline-shaped source with the same subfolders, or a plain
    local UMT5 folder from its top level. revision/variant apply to the base repository only."""
    t5_path = options.get("pretrained_t5_model_name_or_path")
    if t5_path:
        local = Path(t5_path).expanduser()
        if local.is_dir() and not (local / subfolder).is_dir():
            return {"pretrained_model_name_or_path": str(local)}
        return {"pretrained_model_name_or_path": t5_path, "subfolder": subfolder}
    kwargs: dict[str, Any] = {"pretrained_model_name_or_path": model_path, "subfolder": subfolder}
    if options.get("revision"):
        kwargs["revision"] = options["revision"]
    if weights and options.get("variant"):
        kwargs["variant"] = options["variant"]
    return kwargs


def load_text_encoders(
    model_path: str, *, device: torch.device, dtype: torch.dtype, options: Mapping[str, Any]
) -> te.TextEncoders:
    """The pipeline's tokenizer (the real repos ship Pile-T5's LlamaTokenizerFast; AutoTokenizer
    reads whichever class tokenizer_config.json names) and its frozen UMT5EncoderModel."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(**_source(model_path, "tokenizer", options, False))
    model = UMT5EncoderModel.from_pretrained(
        **_source(model_path, "text_encoder", options, True), dtype=dtype
    )
    model = model.to(device).eval().requires_grad_(False)
    return te.TextEncoders(
        models={"text_encoder": model}, tokenizers={"text_encoder": tokenizer}, device=device
    )


def validation_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"max_sequence_length": max_length(options)}


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """prompt_embeds (B, L, D): UMT5 run with its mask, padding positions zeroed, as
    AuraFlowPipeline.encode_prompt does; prompt_attention_mask (B, L) is the tokenizer's mask
    (the transformer takes none: the zeroed padding is all it sees of it)."""
    with te.inference_mode():
        embeds, mask = te.t5_encode(
            encoders, "text_encoder", prompts, max_length=max_length(options), masked=True
        )
        embeds = embeds * mask.unsqueeze(-1).to(embeds.dtype)
        return {"prompt_embeds": te.to_numpy(embeds), "prompt_attention_mask": te.to_numpy(mask)}


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """AuraFlowPipeline's transformer call: the time as sigma in [0, 1] (t = 1 is noise)."""
    dtype = unwrap(denoiser).dtype
    pred = denoiser(
        noisy_latents.to(dtype),
        encoder_hidden_states=conditioning(batch, "prompt_embeds", noisy_latents, dtype),
        timestep=(timesteps / 1000).to(noisy_latents.device, noisy_latents.dtype),
        return_dict=False,
    )[0]
    return Prediction(pred.to(noisy_latents.dtype))

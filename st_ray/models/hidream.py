"""HiDream-I1: flow-matching MoE transformer conditioned on CLIP-L + CLIP-G (pooled), T5 and
every layer of Llama 3.1; Flux-style 16-channel VAE; the transformer predicts the inverted
velocity (x0 - noise), which ``predict`` negates as the pipeline does."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.config.schema import opt
from st_ray.models import llama_text
from st_ray.models import text_encoders as te
from st_ray.models.family import (
    FamilySpec,
    Prediction,
    conditioning,
    load_pretrained_denoiser,
    unwrap,
)
from st_ray.models.slider_targets import SLIDER_ATTENTION_TARGETS

if TYPE_CHECKING:
    import numpy as np
    import torch

OPTIONS = (
    opt(
        "hidream_use_load_balancing_loss",
        bool,
        False,
        "HiDream: add the mixture-of-experts router's load-balancing loss so experts are used "
        "evenly (experimental).",
    ),
    opt(
        "hidream_load_balancing_loss_weight",
        float,
        None,
        "HiDream: weight of the load-balancing loss; unset uses the model's built-in weight.",
        minimum=0,
    ),
)

SPEC = FamilySpec(
    # SimpleTuner's SLIDER_LORA_TARGET for hidream: the image stream's attention only.
    slider_lora_targets=SLIDER_ATTENTION_TARGETS,
    name="hidream",
    token_routing_refused=(
        "hidream's single-stream blocks take image and text tokens as one sequence (its "
        "double-stream blocks extend the text per block), so TREAD cannot route its image "
        "tokens generically"
    ),
    denoiser="transformer",
    denoiser_class="HiDreamImageTransformer2DModel",
    prediction_types=("flow_matching",),
    flavours={
        "full": "HiDream-ai/HiDream-I1-Full",
        "dev": "HiDream-ai/HiDream-I1-Dev",
        "fast": "HiDream-ai/HiDream-I1-Fast",
    },
    pixel_granularity=16,  # 8x VAE, 2x2 patches
    text_encoders=4,
    pipeline_class="HiDreamImagePipeline",
    latent_channels=16,
    # Every attention projection of both streams. HiDream's output projections are plain
    # Linear layers named to_out / to_out_t, so the usual "to_out.0" would match nothing.
    lora_targets=("to_q", "to_k", "to_v", "to_out", "to_q_t", "to_k_t", "to_v_t", "to_out_t"),
    options=OPTIONS,
)

SLOTS = (
    te.Slot("text_encoder", "tokenizer", "CLIPTextModelWithProjection"),  # long CLIP-L
    te.Slot("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection"),  # long CLIP-G
    te.Slot("text_encoder_3", "tokenizer_3", "T5EncoderModel"),
)
LLAMA = "text_encoder_4"
# The HiDream repositories ship no Llama: SimpleTuner's default source for it (a plain
# LlamaForCausalLM repository, read at its top level).
LLAMA_DEFAULT = "terminusresearch/HiDream-I1-Llama-3.1-8B-Instruct"
# The pipeline's and SimpleTuner's length for T5 and Llama; CLIP is capped at 218.
MAX_LENGTH = 128
CLIP_CAP = 218


def max_length(options: Mapping[str, Any]) -> int:
    return te.t5_max_length(options, MAX_LENGTH)


def load_text_encoders(
    model_path: str, *, device: torch.device, dtype: torch.dtype, options: Mapping[str, Any]
) -> te.TextEncoders:
    """Both CLIPs and T5 from the pipeline folder (T5 honours
    pretrained_t5_model_name_or_path); Llama from text_encoder_4/tokenizer_4 when the folder
    declares them, else from LLAMA_DEFAULT."""
    encoders = te.load(model_path, SLOTS, device=device, dtype=dtype, options=options)
    kwargs = {k: options[k] for k in ("revision", "variant") if options.get(k)}
    if LLAMA in te._components(model_path, options):
        subfolders: tuple[str, str] | None = ("tokenizer_4", LLAMA)
        source = model_path
    else:
        source, subfolders, kwargs = LLAMA_DEFAULT, None, {}
    tokenizer, model = llama_text.load(
        source, subfolders=subfolders, device=device, dtype=dtype, kwargs=kwargs
    )
    encoders.tokenizers[LLAMA], encoders.models[LLAMA] = tokenizer, model
    return encoders


def validation_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"max_sequence_length": max_length(options)}


def prepare_render(pipeline: Any, width: int, height: int) -> None:
    """HiDreamImagePipeline rescales every request to the area of default_sample_size latents
    squared (1024 px by default): make that area the requested one, so validation renders at
    validation_resolution."""
    pipeline.default_sample_size = math.sqrt(width * height) / pipeline.vae_scale_factor


def _pooled(encoders: te.TextEncoders, name: str, prompts: list[str], length: int):
    tokenizer, model = encoders.tokenizers[name], encoders.models[name]
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=min(length, CLIP_CAP),
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return model(ids.to(model.device))[0]  # text_embeds: the projected pooled output


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """pooled_prompt_embeds (B, P1+P2): both CLIPs' projected pooled outputs;
    prompt_embeds_t5 (B, L, D_t5): T5 run with its mask (t5_padding applies);
    prompt_embeds_llama3 (B, layers, L, D): every Llama layer's output, batch first (the
    pipeline keeps layers first). L = tokenizer_max_length or 128."""
    import torch

    length = max_length(options)
    with te.inference_mode():
        pooled = torch.cat(
            [_pooled(encoders, n, prompts, length) for n in ("text_encoder", "text_encoder_2")],
            dim=-1,
        )
        t5, mask = te.t5_encode(encoders, "text_encoder_3", prompts, max_length=length, masked=True)
        llama = llama_text.layer_states(
            encoders.tokenizers[LLAMA], encoders.models[LLAMA], prompts, max_length=length
        )
        return {
            "pooled_prompt_embeds": te.to_numpy(pooled),
            "prompt_embeds_t5": te.to_numpy(te.apply_t5_padding(t5, mask, options)),
            "prompt_embeds_llama3": te.to_numpy(llama),
        }


# ------------------------------------------------------------------ load-balancing loss


def load_denoiser(
    model_path: str, *, dtype: torch.dtype, device: torch.device, options: Mapping[str, Any]
) -> torch.nn.Module:
    """The transformer, with every MoE gate reporting its load-balancing loss to ``predict``
    when hidream_use_load_balancing_loss is on; off, the gates skip computing it."""
    from diffusers.models.transformers.transformer_hidream_image import MoEGate

    model = load_pretrained_denoiser(
        "transformer", SPEC.denoiser_class, model_path, dtype=dtype, device=device, options=options
    )
    use = bool(options.get("hidream_use_load_balancing_loss"))
    weight = options.get("hidream_load_balancing_loss_weight")
    losses: list[torch.Tensor] = []
    model._st_ray_gate_losses = losses
    for gate in (m for m in model.modules() if isinstance(m, MoEGate)):
        # The gate scales its loss by alpha (0.01 built in); the weight option replaces it,
        # as SimpleTuner passes it to the model as aux_loss_alpha.
        gate.alpha = (float(weight) if weight is not None else gate.alpha) if use else 0.0
        gate.register_forward_hook(
            lambda _m, _i, out: losses.append(out[2]) if out[2] is not None else None
        )
    return model


# ------------------------------------------------------------------------------ forward


def _from_training_tokens(out: torch.Tensor, h: int, w: int, patch: int) -> torch.Tensor:
    """The transformer's training-mode output (B, C, tokens, p*p) (tokens padded to max_seq
    for non-square latents) back to (B, C, h, w), inverting its patch order."""
    b, c = out.shape[:2]
    ph, pw = h // patch, w // patch
    grid = out[:, :, : ph * pw].reshape(b, c, ph, pw, patch, patch)
    return grid.permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """The HiDreamImagePipeline's transformer call on (B, C, H, W) latents (the transformer
    patchifies, padding non-square grids to max_seq with a mask), timestep = sigma * 1000,
    Llama states layers-first; the output negated as the pipeline does. With
    hidream_use_load_balancing_loss the gates' load-balancing loss is the auxiliary loss."""
    transformer = unwrap(denoiser)
    dtype = transformer.dtype
    _, _, h, w = noisy_latents.shape
    llama = conditioning(batch, "prompt_embeds_llama3", noisy_latents, dtype).transpose(0, 1)
    losses = getattr(transformer, "_st_ray_gate_losses", None)
    if losses is not None:
        losses.clear()
    out = denoiser(
        hidden_states=noisy_latents.to(dtype),
        timesteps=timesteps.to(noisy_latents.device),
        encoder_hidden_states_t5=conditioning(batch, "prompt_embeds_t5", noisy_latents, dtype),
        encoder_hidden_states_llama3=llama,
        pooled_embeds=conditioning(batch, "pooled_prompt_embeds", noisy_latents, dtype),
        return_dict=False,
    )[0]
    if transformer.training and not transformer.config.force_inference_output:
        out = _from_training_tokens(out, h, w, transformer.config.patch_size)
    return Prediction((-out).to(noisy_latents.dtype), _gate_loss(losses, options))


def _gate_loss(
    losses: list[torch.Tensor] | None, options: Mapping[str, Any]
) -> torch.Tensor | None:
    """Sum of the MoE gates' load-balancing losses of this forward pass (training mode only;
    None when the option is off or nothing was recorded)."""
    import torch

    if not options.get("hidream_use_load_balancing_loss") or not losses:
        return None
    return torch.stack([loss.float() for loss in losses]).sum()

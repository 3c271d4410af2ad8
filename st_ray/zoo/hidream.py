"""Tiny HiDream-I1 (HiDream-ai/HiDream-I1-Full layout plus text_encoder_4/tokenizer_4): MoE
transformer, Flux-style 16-channel VAE, CLIP-L + CLIP-G (248 positions, projected), T5 and
Llama 3.1."""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
)

from . import llama_parts, parts

CLIP_POSITIONS = 248  # HiDream's long-context CLIPs; the pipeline pads them to 128 tokens
LLAMA_LAYERS = 2


def _long_clip(seed: int, name: str, tokenizer, hidden_act: str):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=parts.CLIP_VOCAB_SIZE,
        hidden_size=parts.HIDDEN,
        intermediate_size=parts.HIDDEN * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_POSITIONS,
        hidden_act=hidden_act,
        projection_dim=parts.HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return parts.seeded(seed, name, lambda: CLIPTextModelWithProjection(config).eval())


def build(out_dir: Path, seed: int) -> None:
    tokenizer = parts.clip_tokenizer()
    tokenizer_2 = parts.clip_tokenizer(pad_token=parts.OPENCLIP_PAD)
    text_encoder = _long_clip(seed, "text_encoder", tokenizer, "quick_gelu")
    text_encoder_2 = _long_clip(seed, "text_encoder_2", tokenizer_2, "gelu")
    text_encoder_3 = parts.t5_encoder(seed, "text_encoder_3")
    text_encoder_4 = llama_parts.causal_lm(seed, "text_encoder_4", layers=LLAMA_LAYERS)
    transformer = parts.seeded(
        seed,
        "transformer",
        lambda: HiDreamImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            caption_channels=[text_encoder_3.config.d_model, text_encoder_4.config.hidden_size],
            text_emb_dim=2 * parts.HIDDEN,  # both CLIPs' projections side by side
            num_routed_experts=4,
            num_activated_experts=2,
            axes_dims_rope=(8, 4, 4),  # sums to attention_head_dim (real: 64, 32, 32)
            max_resolution=(32, 32),  # latent size; real: (128, 128)
            # One Llama layer per block (double then single), as the real model picks 48 of 32.
            llama_layers=list(range(LLAMA_LAYERS)),
        ).eval(),
    )
    pipe = HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=parts.vae(
            seed,
            latent_channels=16,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            sample_size=64,
        ),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=parts.t5_tokenizer(),
        text_encoder_4=text_encoder_4,
        tokenizer_4=llama_parts.tokenizer(),
        transformer=transformer,
    )
    parts.save_pipeline(pipe, out_dir)

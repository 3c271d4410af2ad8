"""Tiny FLUX.1-dev (black-forest-labs/FLUX.1-dev layout, guidance-distilled)."""

from __future__ import annotations

from pathlib import Path

from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from . import parts


def build(out_dir: Path, seed: int) -> None:
    text_encoder = parts.clip_text_encoder(seed, "text_encoder")  # CLIP ViT-L (pooled only)
    text_encoder_2 = parts.t5_encoder(seed, "text_encoder_2")  # T5 v1.1 XXL
    transformer = parts.seeded(
        seed,
        "transformer",
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 16 latent channels packed 2x2, as in the real model
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=text_encoder_2.config.d_model,
            pooled_projection_dim=text_encoder.config.hidden_size,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),  # must sum to attention_head_dim (real: 16, 56, 56)
        ).eval(),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    vae = parts.vae(
        seed,
        latent_channels=16,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        sample_size=64,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=parts.clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=parts.t5_tokenizer(),
        transformer=transformer,
    )
    parts.save_pipeline(pipe, out_dir)

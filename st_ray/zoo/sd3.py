"""Tiny Stable Diffusion 3 (stabilityai/stable-diffusion-3-medium-diffusers layout)."""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)

from . import parts


def build(out_dir: Path, seed: int) -> None:
    clip_l = parts.clip_text_encoder(seed, "text_encoder", with_projection=True)
    clip_g = parts.clip_text_encoder(
        seed,
        "text_encoder_2",
        with_projection=True,
        hidden_act="gelu",
        pad_token=parts.OPENCLIP_PAD,
    )
    clip_dim = clip_l.config.hidden_size + clip_g.config.hidden_size
    # The pipeline zero-pads the concatenated CLIP states up to T5's width, so T5 must be at
    # least as wide as both CLIPs together (real: 4096 >= 768 + 1280).
    t5 = parts.t5_encoder(seed, "text_encoder_3", d_model=clip_dim)
    transformer = parts.seeded(
        seed,
        "transformer",
        lambda: SD3Transformer2DModel(
            sample_size=8,  # 64 px
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=t5.config.d_model,
            caption_projection_dim=32,
            pooled_projection_dim=clip_l.config.projection_dim + clip_g.config.projection_dim,
            pos_embed_max_size=32,  # up to 512 px (real: 192 -> 1536 px)
        ).eval(),
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=parts.vae(
            seed,
            latent_channels=16,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            sample_size=64,
        ),
        text_encoder=clip_l,
        tokenizer=parts.clip_tokenizer(),
        text_encoder_2=clip_g,
        tokenizer_2=parts.clip_tokenizer(pad_token=parts.OPENCLIP_PAD),
        text_encoder_3=t5,
        tokenizer_3=parts.t5_tokenizer(),
    )
    parts.save_pipeline(pipe, out_dir)

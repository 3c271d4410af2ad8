"""Tiny Wan 2.1 text-to-video (Wan-AI/Wan2.1-T2V-1.3B-Diffusers layout): WanTransformer3DModel,
AutoencoderKLWan (8x spatial, 4x temporal like the real one), a UMT5 encoder and its T5
tokenizer, and the UniPC flow scheduler the real repository ships."""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)

from . import parts

Z_DIM = 16


def video_vae(seed: int):
    """AutoencoderKLWan with three downsampling stages (two of them in time)."""
    return parts.seeded(
        seed,
        "vae",
        lambda: AutoencoderKLWan(
            base_dim=8,
            z_dim=Z_DIM,
            dim_mult=[1, 2, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.1 * (i % 5) - 0.2 for i in range(Z_DIM)],
            latents_std=[1.5 + 0.1 * (i % 3) for i in range(Z_DIM)],
        ).eval(),
    )


def build(out_dir: Path, seed: int) -> None:
    text_encoder = parts.umt5_encoder(seed, "text_encoder")
    transformer = parts.seeded(
        seed,
        "transformer",
        lambda: WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=Z_DIM,
            out_channels=Z_DIM,
            text_dim=text_encoder.config.d_model,
            freq_dim=32,
            ffn_dim=48,
            num_layers=2,
            rope_max_seq_len=64,
        ).eval(),
    )
    pipe = WanPipeline(
        tokenizer=parts.t5_tokenizer(),
        text_encoder=text_encoder,
        transformer=transformer,
        vae=video_vae(seed),
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=1000,
            flow_shift=3.0,
        ),
    )
    parts.save_pipeline(pipe, out_dir)

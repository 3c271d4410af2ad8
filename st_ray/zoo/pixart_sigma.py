"""Tiny PixArt-Sigma (PixArt-alpha/PixArt-Sigma-XL-2-1024-MS layout)."""

from __future__ import annotations

from pathlib import Path

from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

from . import parts


def build(out_dir: Path, seed: int) -> None:
    t5 = parts.t5_encoder(seed, "text_encoder")
    transformer = parts.seeded(
        seed,
        "transformer",
        lambda: PixArtTransformer2DModel(
            # 32 (= 256 px) is the smallest sample size the pipeline's default aspect-ratio
            # binning accepts; any multiple of 16 px still renders with binning disabled.
            sample_size=32,
            patch_size=2,
            in_channels=4,
            out_channels=8,  # learned sigma: epsilon + variance, like the real model
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            cross_attention_dim=32,
            caption_channels=t5.config.d_model,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            use_additional_conditions=False,
        ).eval(),
    )
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        prediction_type="epsilon",
    )
    pipe = PixArtSigmaPipeline(
        tokenizer=parts.t5_tokenizer(),
        text_encoder=t5,
        # PixArt-Sigma reuses the SDXL VAE.
        vae=parts.vae(seed, scaling_factor=0.13025, sample_size=64),
        transformer=transformer,
        scheduler=scheduler,
    )
    parts.save_pipeline(pipe, out_dir)

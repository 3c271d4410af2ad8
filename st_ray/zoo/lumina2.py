"""Tiny Lumina-Image 2.0 (Alpha-VLLM/Lumina-Image-2.0 layout): next-DiT with noise and context
refiners, Flux-style 16-channel VAE, Gemma 2 text encoder."""

from __future__ import annotations

from pathlib import Path

from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

from . import gemma_parts, parts


def build(out_dir: Path, seed: int) -> None:
    text_encoder = gemma_parts.gemma2_encoder(seed, "text_encoder")
    transformer = parts.seeded(
        seed,
        "transformer",
        lambda: Lumina2Transformer2DModel(
            sample_size=8,  # 64 px
            patch_size=2,
            in_channels=16,
            hidden_size=32,
            num_layers=1,
            num_refiner_layers=1,
            num_attention_heads=2,
            num_kv_heads=1,
            multiple_of=16,
            axes_dim_rope=(4, 6, 6),  # sums to the head dim, 16 (real: 32, 32, 32 of 96)
            axes_lens=(300, 512, 512),  # the real rope tables
            cap_feat_dim=text_encoder.config.hidden_size,
        ).eval(),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=6.0)
    vae = parts.vae(
        seed,
        latent_channels=16,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        sample_size=64,
    )
    pipe = Lumina2Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=gemma_parts.gemma_tokenizer(),
    )
    parts.save_pipeline(pipe, out_dir)
    gemma_parts.save_tokenizer_model(out_dir)

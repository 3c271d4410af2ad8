"""Tiny Cosmos-Predict2 text-to-image (nvidia/Cosmos-Predict2-2B-Text2Image layout): T5, Wan
VAE, Cosmos transformer. The safety checker is not saved (the real repos' guardrail is a
separate package); loaders pass st_ray's pass-through checker."""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKLWan,
    Cosmos2TextToImagePipeline,
    CosmosTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
)

from st_ray.models.cosmos2image import PassThroughSafetyChecker

from . import parts


def build(out_dir: Path, seed: int) -> None:
    transformer = parts.seeded(
        seed,
        "transformer",
        lambda: CosmosTransformer3DModel(
            in_channels=16,
            out_channels=16,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=1,
            mlp_ratio=2.0,
            text_embed_dim=parts.HIDDEN,
            adaln_lora_dim=8,
            max_size=(128, 240, 240),
            patch_size=(1, 2, 2),
            rope_scale=(1.0, 4.0, 4.0),  # the 2B model's image RoPE scale
            concat_padding_mask=True,
            extra_pos_embed_type=None,
        ).eval(),
    )
    # The real VAE's statistics (its config defaults), so latents are normalised as there.
    vae = parts.seeded(
        seed,
        "vae",
        lambda: AutoencoderKLWan(
            base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1
        ).eval(),
    )
    # The real scheduler_config.json: Karras sigmas (the pipeline adds sigma_min/max/data).
    scheduler = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
    pipe = Cosmos2TextToImagePipeline(
        text_encoder=parts.t5_encoder(seed, "text_encoder"),
        tokenizer=parts.t5_tokenizer(),
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        safety_checker=PassThroughSafetyChecker(),
    )
    pipe.register_to_config(safety_checker=(None, None))  # optional component: not saved
    parts.save_pipeline(pipe, out_dir)

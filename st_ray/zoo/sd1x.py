"""Tiny Stable Diffusion 1.x (runwayml/stable-diffusion-v1-5 layout)."""

from __future__ import annotations

from pathlib import Path

from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from . import parts


def unet(seed: int, *, sd2: bool = False) -> UNet2DConditionModel:
    """SD1/SD2 UNet: cross-attention blocks first, plain block last (mirrors the 4-block real one)."""
    extra = (
        # SD2.x: linear projections, per-block head dims and fp32 attention like sd2-1.
        dict(use_linear_projection=True, attention_head_dim=(2, 4), upcast_attention=True)
        if sd2
        else dict(attention_head_dim=8)
    )
    return parts.seeded(
        seed,
        "unet",
        lambda: UNet2DConditionModel(
            sample_size=8,  # latent size: 64 px images
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=parts.HIDDEN,
            norm_num_groups=32,
            **extra,
        ).eval(),
    )


def build(out_dir: Path, seed: int) -> None:
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=parts.vae(seed, scaling_factor=0.18215, sample_size=64),
        text_encoder=parts.clip_text_encoder(seed, "text_encoder"),
        tokenizer=parts.clip_tokenizer(),
        unet=unet(seed),
        scheduler=scheduler,
        safety_checker=None,  # the real safety checker is a full CLIP vision model
        feature_extractor=None,
        requires_safety_checker=False,
    )
    parts.save_pipeline(pipe, out_dir)

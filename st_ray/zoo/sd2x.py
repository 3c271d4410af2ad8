"""Tiny Stable Diffusion 2.x, v-prediction (stabilityai/stable-diffusion-2-1 layout)."""

from __future__ import annotations

from pathlib import Path

from diffusers import DDIMScheduler, StableDiffusionPipeline

from . import parts
from .sd1x import unet


def build(out_dir: Path, seed: int) -> None:
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    pipe = StableDiffusionPipeline(
        vae=parts.vae(seed, scaling_factor=0.18215, sample_size=64),
        # OpenCLIP ViT-H text tower: gelu activation, "!" padding.
        text_encoder=parts.clip_text_encoder(
            seed, "text_encoder", hidden_act="gelu", pad_token=parts.OPENCLIP_PAD
        ),
        tokenizer=parts.clip_tokenizer(pad_token=parts.OPENCLIP_PAD),
        unet=unet(seed, sd2=True),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    parts.save_pipeline(pipe, out_dir)

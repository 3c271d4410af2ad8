"""Tiny Kolors (Kwai-Kolors/Kolors-diffusers layout): SDXL-style UNet whose text_proj maps the
ChatGLM states to the cross-attention width, and whose pooled input is the ChatGLM state."""

from __future__ import annotations

import tempfile
from pathlib import Path

from diffusers import EulerDiscreteScheduler, KolorsPipeline

from . import chatglm_parts, parts, sdxl

CROSS_DIM = 64  # real: 2048 (ChatGLM's 4096 is projected down by encoder_hid_proj)


def build(out_dir: Path, seed: int) -> None:
    text_encoder = chatglm_parts.text_encoder(seed)
    width = text_encoder.config.hidden_size
    unet = sdxl.unet_for(
        seed,
        cross_dim=CROSS_DIM,
        pooled_dim=width,
        encoder_hid_dim=width,
        encoder_hid_dim_type="text_proj",
    )
    scheduler = EulerDiscreteScheduler(  # as in Kolors: 1100 train steps
        num_train_timesteps=1100,
        beta_start=0.00085,
        beta_end=0.014,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        use_karras_sigmas=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        pipe = KolorsPipeline(
            vae=parts.vae(seed, scaling_factor=0.13025, sample_size=64),
            text_encoder=text_encoder,
            tokenizer=chatglm_parts.tokenizer(Path(tmp)),
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=False,
        )
        parts.save_pipeline(pipe, out_dir)

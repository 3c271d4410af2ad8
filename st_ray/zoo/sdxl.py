"""Tiny SDXL base (stabilityai/stable-diffusion-xl-base-1.0 layout)."""

from __future__ import annotations

from pathlib import Path

from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

from . import parts

ADD_TIME_DIM = 8  # real: 256


def unet_for(seed: int, *, cross_dim: int, pooled_dim: int, **extra) -> UNet2DConditionModel:
    """The tiny SDXL-layout UNet (also Kolors'): its text_time embedding takes the pooled text
    projection plus 6 micro-conditioning time embeddings; ``extra`` adds config (text_proj)."""
    return parts.seeded(
        seed,
        "unet",
        lambda: UNet2DConditionModel(
            sample_size=8,  # 64 px
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2),
            use_linear_projection=True,
            cross_attention_dim=cross_dim,
            addition_embed_type="text_time",
            addition_time_embed_dim=ADD_TIME_DIM,
            projection_class_embeddings_input_dim=pooled_dim + 6 * ADD_TIME_DIM,
            norm_num_groups=32,
            **extra,
        ).eval(),
    )


def build(out_dir: Path, seed: int) -> None:
    text_encoder = parts.clip_text_encoder(seed, "text_encoder")  # CLIP ViT-L
    text_encoder_2 = parts.clip_text_encoder(  # OpenCLIP bigG, pooled projection
        seed,
        "text_encoder_2",
        with_projection=True,
        hidden_act="gelu",
        pad_token=parts.OPENCLIP_PAD,
    )
    # Same wiring as the real model: cross-attn dim = concat of both encoders' hidden states.
    cross_dim = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    unet = unet_for(seed, cross_dim=cross_dim, pooled_dim=text_encoder_2.config.projection_dim)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        use_karras_sigmas=False,
    )
    pipe = StableDiffusionXLPipeline(
        vae=parts.vae(seed, scaling_factor=0.13025, sample_size=64),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=parts.clip_tokenizer(),
        tokenizer_2=parts.clip_tokenizer(pad_token=parts.OPENCLIP_PAD),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,  # invisible-watermark is not a dependency
    )
    parts.save_pipeline(pipe, out_dir)

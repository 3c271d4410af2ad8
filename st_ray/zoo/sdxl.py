"""Tiny SDXL base (stabilityai/stable-diffusion-xl-base-1.0 layout)."""

from __future__ import annotations

from pathlib import Path

from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

from . import Workload, parts

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


# SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0 model_index / unet config).
REAL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
REAL_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
)


def reference_workload(resolution: int) -> Workload:
    """The real SDXL base VAE and UNet on the meta device (no weights) with inputs for one
    ``resolution`` x ``resolution`` image: what ``python -m st_ray.bench sizing`` counts."""
    import torch
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**REAL_VAE)
        unet = UNet2DConditionModel(**REAL_UNET)
        image = torch.empty(1, 3, resolution, resolution)
        latent = torch.empty(1, 4, resolution // 8, resolution // 8)
        text = torch.empty(1, 77, 2048)
        added = {"text_embeds": torch.empty(1, 1280), "time_ids": torch.empty(1, 6)}
        timestep = torch.tensor([500])
    return Workload(
        denoiser=unet,
        encode=lambda: vae.encode(image),
        forward=lambda: unet(latent, timestep, text, added_cond_kwargs=added),
    )

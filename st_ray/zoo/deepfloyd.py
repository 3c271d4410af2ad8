"""Tiny DeepFloyd IF stage I (DeepFloyd/IF-I-XL-v1.0 layout: no VAE, T5, learned-variance
UNet with text-pooled time embedding and added-KV cross-attention blocks)."""

from __future__ import annotations

from pathlib import Path

from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel

from . import parts


def build(out_dir: Path, seed: int) -> None:
    t5 = parts.t5_encoder(seed, "text_encoder")
    unet = parts.seeded(
        seed,
        "unet",
        lambda: UNet2DConditionModel(
            sample_size=64,
            in_channels=3,
            out_channels=6,  # epsilon + learned variance, like the real stage I
            layers_per_block=1,
            block_out_channels=(16, 32),
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            norm_num_groups=8,
            cross_attention_dim=32,
            encoder_hid_dim=t5.config.d_model,
            encoder_hid_dim_type="text_proj",
            attention_head_dim=8,
            addition_embed_type="text",
            addition_embed_type_num_heads=2,
            cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift",
            act_fn="gelu",
        ).eval(),
    )
    # DeepFloyd/IF-I-XL-v1.0's scheduler_config.json.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        beta_start=0.0001,
        beta_end=0.02,
        clip_sample=True,
        clip_sample_range=1.0,
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.5,
        prediction_type="epsilon",
        variance_type="learned_range",
    )
    pipe = IFPipeline(
        tokenizer=parts.t5_tokenizer(),
        text_encoder=t5,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    parts.save_pipeline(pipe, out_dir)

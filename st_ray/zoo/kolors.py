"""Tiny Kolors (Kwai-Kolors/Kolors-diffusers layout): SDXL-style UNet whose text_proj maps the
ChatGLM states to the cross-attention width, and whose pooled input is the ChatGLM state."""

from __future__ import annotations

import tempfile
from pathlib import Path

from diffusers import EulerDiscreteScheduler, KolorsPipeline, UNet2DConditionModel

from . import chatglm_parts, parts

ADD_TIME_DIM = 8  # real: 256
CROSS_DIM = 64  # real: 2048 (ChatGLM's 4096 is projected down by encoder_hid_proj)


def build(out_dir: Path, seed: int) -> None:
    text_encoder = chatglm_parts.text_encoder(seed)
    width = text_encoder.config.hidden_size
    unet = parts.seeded(
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
            cross_attention_dim=CROSS_DIM,
            encoder_hid_dim=width,
            encoder_hid_dim_type="text_proj",
            addition_embed_type="text_time",
            addition_time_embed_dim=ADD_TIME_DIM,
            projection_class_embeddings_input_dim=width + 6 * ADD_TIME_DIM,
            norm_num_groups=32,
        ).eval(),
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

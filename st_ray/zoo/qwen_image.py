"""Tiny Qwen-Image (Qwen/Qwen-Image layout): Qwen2.5-VL text encoder, Qwen VAE, MMDiT."""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)

from . import parts, qwen_parts


def build(out_dir: Path, seed: int) -> None:
    text_encoder = qwen_parts.text_encoder(seed)
    transformer = parts.seeded(
        seed,
        "transformer",
        lambda: QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=64,  # 16 latent channels packed 2x2, as in the real model
            out_channels=16,
            num_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=text_encoder.config.text_config.hidden_size,
            axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim (real: 16, 56, 56)
        ).eval(),
    )
    # The real VAE's statistics (its config defaults), so latents are normalised as there.
    vae = parts.seeded(
        seed,
        "vae",
        lambda: AutoencoderKLQwenImage(
            base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1
        ).eval(),
    )
    # Qwen/Qwen-Image's scheduler_config.json.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    pipe = QwenImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=qwen_parts.tokenizer(),
        transformer=transformer,
    )
    parts.save_pipeline(pipe, out_dir)
    qwen_parts.write_legacy_files(out_dir / "tokenizer")

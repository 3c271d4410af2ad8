"""Tiny AuraFlow (fal/AuraFlow-v0.3 layout): MMDiT + single DiT blocks, SDXL VAE, UMT5."""

from __future__ import annotations

from pathlib import Path

from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler

from . import parts


def build(out_dir: Path, seed: int) -> None:
    text_encoder = parts.umt5_encoder(seed, "text_encoder")
    transformer = parts.seeded(
        seed,
        "transformer",
        lambda: AuraFlowTransformer2DModel(
            sample_size=8,  # 64 px
            patch_size=2,
            in_channels=4,
            num_mmdit_layers=1,
            num_single_dit_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=text_encoder.config.d_model,
            caption_projection_dim=32,  # = heads x head dim, as in the real model
            out_channels=4,
            pos_embed_max_size=256,  # a 16 x 16 patch grid: up to 256 px
        ).eval(),
    )
    pipe = AuraFlowPipeline(
        # The real repos ship Pile-T5's sentencepiece tokenizer (as LlamaTokenizerFast); this
        # one is the zoo's T5 sentencepiece model, the class the pipeline declares.
        tokenizer=parts.t5_tokenizer(),
        text_encoder=text_encoder,
        vae=parts.vae(seed, scaling_factor=0.13025, sample_size=64),  # the SDXL VAE
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.73),
    )
    parts.save_pipeline(pipe, out_dir)

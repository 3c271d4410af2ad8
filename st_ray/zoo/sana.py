"""Tiny Sana (Efficient-Large-Model/Sana_600M_1024px_diffusers layout): linear-attention DiT,
32x DC-AE, Gemma 2 text encoder, DPM-Solver sampler on flow sigmas."""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderDC,
    DPMSolverMultistepScheduler,
    SanaPipeline,
    SanaTransformer2DModel,
)

from . import gemma_parts, parts

# Six stages -> 32x spatial compression, like the real DC-AE f32c32; the deepest two use the
# EfficientViT (linear attention) blocks as the real one does.
_DC_BLOCKS = (8, 8, 16, 16, 32, 32)
_DC_TYPES = ("ResBlock",) * 4 + ("EfficientViTBlock",) * 2


def dc_ae(seed: int) -> AutoencoderDC:
    return parts.seeded(
        seed,
        "vae",
        lambda: AutoencoderDC(
            in_channels=3,
            latent_channels=32,
            attention_head_dim=8,
            encoder_block_types=_DC_TYPES,
            decoder_block_types=_DC_TYPES,
            encoder_block_out_channels=_DC_BLOCKS,
            decoder_block_out_channels=_DC_BLOCKS,
            encoder_layers_per_block=(1,) * 6,
            decoder_layers_per_block=(1,) * 6,
            encoder_qkv_multiscales=((),) * 4 + ((5,),) * 2,
            decoder_qkv_multiscales=((),) * 4 + ((5,),) * 2,
            upsample_block_type="interpolate",
            downsample_block_type="Conv",
            decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * 3,
            decoder_act_fns=("relu",) * 3 + ("silu",) * 3,
            scaling_factor=0.41407,  # the real DC-AE's
        ).eval(),
    )


def build(out_dir: Path, seed: int) -> None:
    text_encoder = gemma_parts.gemma2_encoder(seed, "text_encoder")
    transformer = parts.seeded(
        seed,
        "transformer",
        lambda: SanaTransformer2DModel(
            in_channels=32,
            out_channels=32,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=1,
            num_cross_attention_heads=2,
            cross_attention_head_dim=16,
            cross_attention_dim=32,
            caption_channels=text_encoder.config.hidden_size,
            mlp_ratio=2.5,
            # 16 (= 512 px) is the smallest size the pipeline's resolution binning knows.
            sample_size=16,
            patch_size=1,
        ).eval(),
    )
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
    )
    pipe = SanaPipeline(
        tokenizer=gemma_parts.gemma_tokenizer(),
        text_encoder=text_encoder,
        vae=dc_ae(seed),
        transformer=transformer,
        scheduler=scheduler,
    )
    parts.save_pipeline(pipe, out_dir)
    gemma_parts.save_tokenizer_model(out_dir)

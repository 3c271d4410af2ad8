"""CREPA (issue 17 item 2) and slider LoRA targets (item 8).

CREPA: its maths against hand-computed cases (frame similarity with neighbours, the weight
schedule and cutoffs, token alignment), the tiny DINOv2's patch features, refusals at
--dry-run, and one in-process 2-step run on the tiny Flux with the tiny DINOv2: the term is
logged and finite, it is exactly what the step's loss gained, the head is in the checkpoint
and a resume from step 1 repeats step 2 exactly (in test_objectives, beside the other
objectives' runs on the same tiny families). Slider: the per-family target sets, the
refusals, and a slider LoRA on the tiny SD 1.x UNet (convolutions and time embedding
included) that loads in diffusers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from st_ray import zoo
from st_ray.train import crepa, crepa_math
from tests.test_objectives import _refusals

# ------------------------------------------------------------------------------ the maths


def test_frame_similarity_by_hand() -> None:
    # One frame (an image): tokens (1, 0), (0, 1) against (2, 0), (3, 0): cos 1 and 0.
    p = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    f = torch.tensor([[[[2.0, 0.0], [3.0, 0.0]]]])
    one = crepa_math.frame_similarity(
        p, f, distance=1, tau=1.0, cumulative=False, normalize_by_frames=True
    )
    assert one.score.tolist() == pytest.approx([0.5]) and one.self_similarity == pytest.approx(0.5)
    # Two frames of one token, d = 1, tau = 1: frame 0 = cos(p0, f0) + e^-1 cos(p0, f1),
    # frame 1 = cos(p1, f1) + e^-1 cos(p1, f0).
    p = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    f = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])
    r = 1 / math.sqrt(2)
    w = math.exp(-1)
    frames = [1 + w * r, r + w * 0.0]
    two = crepa_math.frame_similarity(
        p, f, distance=1, tau=1.0, cumulative=False, normalize_by_frames=True
    )
    assert two.score.item() == pytest.approx(sum(frames) / 2)
    assert two.alignment == pytest.approx(sum(frames) / 2)
    assert two.self_similarity == pytest.approx((1 + r) / 2)
    summed = crepa_math.frame_similarity(
        p, f, distance=1, tau=1.0, cumulative=False, normalize_by_frames=False
    )
    assert summed.score.item() == pytest.approx(sum(frames))
    # Three frames, d = 2: exactly distance 2 (frames 0 <-> 2, weight e^-2), or cumulative
    # (distances 1 and 2). Every frame and feature is the same: every cosine is 1.
    same = torch.randn(1, 1, 4, 5).expand(1, 3, 4, 5)
    exact = crepa_math.frame_similarity(
        same, same.clone(), distance=2, tau=1.0, cumulative=False, normalize_by_frames=False
    )
    assert exact.score.item() == pytest.approx(3 + 2 * math.exp(-2), rel=1e-5)
    cumulative = crepa_math.frame_similarity(
        same, same.clone(), distance=2, tau=1.0, cumulative=True, normalize_by_frames=False
    )
    assert cumulative.score.item() == pytest.approx(
        3 + 4 * math.exp(-1) + 2 * math.exp(-2), rel=1e-5
    )


def test_schedule_by_hand() -> None:
    base = {"crepa_lambda": 0.5, "crepa_warmup_steps": 10, "crepa_decay_steps": 20}
    base["crepa_lambda_end"] = 0.1

    def at(step: int, **changes) -> float:
        return crepa_math.Schedule({**base, **changes}, total_steps=100).scheduled(step)

    assert at(5) == pytest.approx(0.25)  # warmup: 0.5 * 5/10
    assert at(15) == pytest.approx(0.5)  # constant after warmup
    assert at(15, crepa_scheduler="linear") == pytest.approx(0.3)  # halfway 0.5 -> 0.1
    assert at(15, crepa_scheduler="cosine") == pytest.approx(0.3)  # cos(pi/2) = 0
    assert at(15, crepa_scheduler="polynomial", crepa_power=2) == pytest.approx(0.2)
    assert at(40, crepa_scheduler="linear") == pytest.approx(0.1)  # decay over: lambda_end
    # crepa_decay_steps 0: over the whole run (step 55 of 100 is halfway after warmup).
    assert at(55, crepa_scheduler="linear", crepa_decay_steps=0) == pytest.approx(0.3)

    stepped = crepa_math.Schedule({**base, "crepa_cutoff_step": 12}, total_steps=100)
    assert stepped.weight(11, 0.0) == pytest.approx(0.5) and stepped.weight(12, 0.0) == 0
    assert stepped.off_for_good(12)

    similar = {**base, "crepa_similarity_threshold": 0.5, "crepa_similarity_ema_decay": 0.5}
    permanent = crepa_math.Schedule(similar, total_steps=100)
    assert permanent.weight(20, 0.4) == pytest.approx(0.5)  # EMA 0.4
    assert permanent.weight(21, 0.7) == 0 and permanent.ema == pytest.approx(0.55)
    assert permanent.weight(22, 0.0) == 0 and permanent.off_for_good(22)  # EMA 0.275, stays off
    recoverable = crepa_math.Schedule({**similar, "crepa_threshold_mode": "recoverable"}, 100)
    recoverable.weight(20, 0.4)
    assert recoverable.weight(21, 0.7) == 0
    assert recoverable.weight(22, 0.0) == pytest.approx(0.5)  # EMA 0.275: back on
    # The EMA and the cutoff travel in checkpoints.
    restored = crepa_math.Schedule(similar, total_steps=100)
    restored.load_state_dict(permanent.state_dict())
    assert restored.weight(23, 0.0) == 0 and restored.ema == pytest.approx(0.1375)


def test_tokens_are_aligned_on_one_grid() -> None:
    assert crepa_math.grid_for(8, 2.0) == (2, 4) and crepa_math.grid_for(16, 1.0) == (4, 4)
    # A UNet map (B, C, H, W) is one frame of H·W tokens with its grid.
    frames, grid = crepa_math.as_frames(torch.zeros(2, 3, 4, 6))
    assert frames.shape == (2, 1, 24, 3) and grid == (4, 6)
    fine = torch.arange(16.0).view(1, 1, 16, 1).expand(1, 1, 16, 2)
    coarse = torch.ones(1, 1, 4, 2)
    a, b = crepa_math.align_tokens(fine, (4, 4), coarse, (2, 2), spatial_align=True)
    assert a.shape == b.shape == (1, 1, 4, 2)
    # Bilinear 4x4 -> 2x2 halves each side: each output averages its 2x2 patch.
    assert a[0, 0, :, 0].tolist() == pytest.approx([2.5, 4.5, 10.5, 12.5])
    a, b = crepa_math.align_tokens(fine, (4, 4), coarse, (2, 2), spatial_align=False)
    assert a.shape == b.shape == (1, 1, 1, 2) and a[0, 0, 0, 0].item() == pytest.approx(7.5)


def test_tiny_dinov2_patch_features(zoo_root: Path) -> None:
    folder = zoo.ensure("dinov2", zoo_root)
    assert (folder / "preprocessor_config.json").is_file()
    assert crepa.encoder_source("dinov2_vits14") == "facebook/dinov2-small"
    assert crepa.encoder_source(str(folder)) == str(folder)
    encoder = crepa.load_encoder(str(folder), torch.device("cpu"), torch.float32)
    settings = crepa.Settings.from_options(
        {"crepa_enabled": True, "crepa_model": str(folder), "crepa_encoder_image_size": 64}
    )
    pixels = torch.rand(2, 3, 40, 56) * 2 - 1
    features = crepa.encode_pixels(encoder, pixels, settings)
    assert features.shape == (2, 1, 64, 32)  # 8x8 patches of 8 px, CLS dropped
    assert crepa.encoder_grid(encoder, 64) == (8, 8)
    resized = torch.nn.functional.interpolate((pixels + 1) / 2, size=(64, 64), mode="bilinear")
    mean = torch.tensor(crepa.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(crepa.IMAGENET_STD).view(1, 3, 1, 1)
    direct = encoder(pixel_values=(resized - mean) / std).last_hidden_state[:, 1:]
    assert torch.allclose(features[:, 0], direct, atol=1e-5)


def test_crepa_and_slider_refusals(tmp_path: Path) -> None:
    message = _refusals(tmp_path, model_family="auraflow", crepa_enabled=True)
    assert "auraflow does not expose its denoiser's block list" in message
    message = _refusals(tmp_path, crepa_enabled=True, crepa_lambda=0, crepa_teacher_block_index=2)
    assert "crepa_lambda: must be greater than 0" in message
    assert "crepa_teacher_block_index: only applies with crepa_use_backbone_features" in message
    message = _refusals(tmp_path, crepa_enabled=True, optimizer_release_gradients=True)
    assert "optimizer_release_gradients: cannot be combined with CREPA" in message
    message = _refusals(tmp_path, slider_lora_target=True, model_type="full")
    assert "slider_lora_target: only applies to model_type 'lora'" in message
    message = _refusals(tmp_path, slider_lora_target=True, peft_lora_target_modules='["to_q"]')
    assert "slider_lora_target: cannot be combined with peft_lora_target_modules" in message


# ------------------------------------------------------------------------------- slider


def test_slider_targets_per_family_and_the_lora_loads_in_diffusers(
    zoo_root: Path, tmp_path: Path
) -> None:
    import diffusers

    from st_ray.models.slider_targets import SLIDER_ATTENTION_TARGETS, SLIDER_TARGETS
    from st_ray.train import adapters, lora_export
    from st_ray.train.lora_targets import lora_target_modules

    on = {"slider_lora_target": True, "model_type": "lora", "lora_rank": 2}
    assert lora_target_modules("sd1x", on) == list(SLIDER_TARGETS)
    assert lora_target_modules("flux", on) == [*SLIDER_ATTENTION_TARGETS, "to_qkv"]
    assert lora_target_modules("sd3", on) == list(SLIDER_ATTENTION_TARGETS)
    assert "attn2.to_k" not in lora_target_modules("sd1x", on)  # text cross-attention kept

    model = zoo.ensure("sd1x", zoo_root)
    unet = diffusers.UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    adapters.add_lora(unet, "sd1x", on)
    adapted = {k.rsplit(".lora_A", 1)[0] for k in adapters.lora_state_dict(unet) if ".lora_A" in k}
    assert {"conv_in", "conv_out", "time_embedding.linear_1"} <= adapted
    assert any(k.endswith("attn1.to_q") for k in adapted)
    assert not any("attn2" in k for k in adapted)
    with torch.no_grad():  # non-zero B so the loaded LoRA changes the UNet's output
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    lora_export.save_lora(unet, "sd1x", tmp_path, lora_format="diffusers")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    sample = torch.randn(1, 4, 8, 8)
    cond = torch.randn(1, 77, pipe.unet.config.cross_attention_dim)
    before = pipe.unet(sample, 10, cond).sample
    pipe.load_lora_weights(tmp_path, weight_name=adapters.WEIGHT_NAME)
    after = pipe.unet(sample, 10, cond).sample
    assert not torch.allclose(before, after)


def test_crepa_backbone_mode_needs_no_encoder() -> None:
    """crepa_use_backbone_features: the teacher is a deeper block, detached; the head maps the
    student's width to the teacher's."""
    net = torch.nn.Module()
    net.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 6)])
    family = type("F", (), {"spec": type("S", (), {"hidden_blocks": (("transformer_blocks", 0),)})})
    options = {
        "crepa_enabled": True,
        "crepa_block_index": 0,
        "crepa_use_backbone_features": True,
        "crepa_teacher_block_index": 1,
        "crepa_lambda": 0.5,
    }
    x = torch.randn(2, 8, 4)
    reg = crepa.Crepa.attach(
        options,
        net,
        family,
        probe=lambda: net.transformer_blocks[1](net.transformer_blocks[0](x)),
        total_steps=10,
    )
    assert reg.encoder is None and reg.head[1].weight.shape == (6, 4)
    with reg.capturing():
        net.transformer_blocks[1](net.transformer_blocks[0](x))
    term, metrics = reg.loss(torch.zeros(2, 4, 2, 4), step=3)
    term.backward()
    assert metrics["crepa_loss"] == pytest.approx(-0.5 * metrics["crepa_similarity_self"])
    assert reg.head[1].weight.grad is not None
    assert net.transformer_blocks[1].weight.grad is None  # the teacher is detached
    with pytest.raises(ValueError, match="crepa_block_index: block 5 \\(0-based\\)"):
        crepa.Crepa.attach({**options, "crepa_block_index": 5}, net, family, total_steps=1)


@pytest.mark.parametrize("family", ["flux", "sana", "qwen_image", "cosmos2image"])
def test_decode_latents_inverts_the_cached_latents(family: str, zoo_root: Path) -> None:
    """CREPA's pixels: ``decode_latents`` undoes the family's latent scaling / shift /
    normalisation before the VAE decodes (compared with decoding the raw VAE latents)."""
    from st_ray.data.encoders import VaeEncoder
    from st_ray.models.family import get_family_module

    chosen = get_family_module(family)
    vae = VaeEncoder(str(zoo.ensure(family, zoo_root)), family=family).vae.to("cpu").float()
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = chosen.encode_latents(vae, pixels, lambda shape: torch.zeros(1, *shape))
        decoded = chosen.decode_latents(vae, latents)
        if family == "sana":
            raw = vae.decode(vae.encode(pixels).latent).sample
        elif family == "flux":
            raw = vae.decode(vae.encode(pixels).latent_dist.mean).sample
        else:  # one-frame video VAEs
            raw = vae.decode(vae.encode(pixels.unsqueeze(2)).latent_dist.mean).sample.squeeze(2)
    assert decoded.shape == pixels.shape
    assert torch.allclose(decoded, raw, atol=1e-4)

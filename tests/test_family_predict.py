"""Training forward pass of the family protocol: each family's predict, fed its own
encode_prompts output, makes exactly the denoiser call of its diffusers pipeline and trains."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
from diffusers import FluxPipeline, QwenImagePipeline

from st_ray import zoo
from st_ray.config.loader import default_value
from st_ray.config.options import CANONICAL
from st_ray.models import sdxl
from st_ray.models.family import FamilyModule, get_family, get_family_module

CPU = torch.device("cpu")
PROMPTS = ["a photo of a cat sitting on a wooden table", "dog"]
# Every catalog option at its default, as build_plan hands them over (gradient
# checkpointing on, Flux guidance constant 1.0, masking off).
OPTIONS: dict[str, Any] = {name: default_value(o) for name, o in CANONICAL.items()}
FLUX_GUIDANCE = 3.5  # the FluxPipeline's default guidance_scale
OMNIGEN_GUIDANCE = 2.5  # OmniGenPipeline's default; it always runs CFG
# SDXL micro-conditioning, per sample, (h, w) and (top, left): distinct values in every slot.
SDXL_SIZES = {
    "original_size": torch.tensor([[96, 80], [1024, 768]]),
    "crop_top_left": torch.tensor([[8, 4], [0, 32]]),
    "target_size": torch.tensor([[64, 72], [1024, 1024]]),
}


@dataclass
class Setup:
    path: Path
    module: FamilyModule
    batch: dict[str, torch.Tensor]
    denoiser: torch.nn.Module
    channels: int  # the VAE's latent channels


@pytest.fixture(scope="module")
def setup(zoo_root: Path) -> Callable[[str], Setup]:
    """Per family, built and loaded once: the zoo model, a batch of its own cached
    conditioning for PROMPTS, and its denoiser loaded through the protocol."""
    cache: dict[str, Setup] = {}

    def get(family: str) -> Setup:
        if family not in cache:
            path = zoo.ensure(family, zoo_root)
            module = get_family_module(family)
            encoders = module.load_text_encoders(
                str(path), device=CPU, dtype=torch.float32, options=OPTIONS
            )
            arrays = module.encode_prompts(encoders, PROMPTS, options=OPTIONS)
            batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
            if family in ("sdxl", "kolors"):
                batch.update(SDXL_SIZES)
            denoiser = module.load_denoiser(
                str(path), dtype=torch.float32, device=CPU, options=OPTIONS
            )
            cache[family] = Setup(path, module, batch, denoiser, latent_channels(path))
        return cache[family]

    return get


def latent_channels(path: Path) -> int:
    """Channels of the latents the denoiser works on: the VAE's (AutoencoderKL's
    latent_channels, the video VAEs' z_dim); the UNet's input channels in pixel space."""
    if not (path / "vae").is_dir():
        return json.loads((path / "unet" / "config.json").read_text())["in_channels"]
    vae = json.loads((path / "vae" / "config.json").read_text())
    return vae.get("latent_channels") or vae["z_dim"]


# ----------------------------------------------------------- the pipeline's own denoiser call


def pipeline_kwargs(family: str, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The pipeline call on our cached conditioning, without CFG (no doubled batch)."""
    if family == "hidream":
        return {
            "prompt_embeds_t5": batch["prompt_embeds_t5"],
            "prompt_embeds_llama3": batch["prompt_embeds_llama3"].transpose(0, 1),  # layers first
            "pooled_prompt_embeds": batch["pooled_prompt_embeds"],
            "guidance_scale": 1.0,
        }
    if family == "omnigen":  # the pipeline takes text only; its CFG batch is sliced off
        return {"prompt": PROMPTS, "guidance_scale": OMNIGEN_GUIDANCE}
    embeds = {"prompt_embeds": batch["prompt_embeds"]}
    if family in ("sdxl", "flux", "sd3", "kolors"):
        embeds["pooled_prompt_embeds"] = batch["pooled_prompt_embeds"]
    if family in ("sdxl", "kolors"):
        # The pipeline takes one size for the whole batch: the first sample's.
        return embeds | {
            "guidance_scale": 1.0,
            "original_size": tuple(SDXL_SIZES["original_size"][0].tolist()),
            "crops_coords_top_left": tuple(SDXL_SIZES["crop_top_left"][0].tolist()),
            "target_size": tuple(SDXL_SIZES["target_size"][0].tolist()),
        }
    if family == "flux":
        return embeds | {"guidance_scale": FLUX_GUIDANCE}  # distilled guidance, no CFG
    if family in ("lumina2", "auraflow"):
        return embeds | {
            "prompt_attention_mask": batch["prompt_attention_mask"],
            "guidance_scale": 1.0,
        }
    if family in ("pixart_sigma", "sana"):
        return embeds | {
            "prompt_attention_mask": batch["prompt_attention_mask"],
            "guidance_scale": 1.0,
            "use_resolution_binning": False,
        }
    if family == "wan":  # 5 frames: 2 latent frames (the VAE's 4x in time, first alone)
        return embeds | {"guidance_scale": 1.0, "num_frames": 5}
    if family == "qwen_image":
        # One step from sigma 0.6: with a single step the default schedule's shift_terminal
        # stretch divides by zero.
        return embeds | {"prompt_embeds_mask": batch["prompt_embeds_mask"], "sigmas": [0.6]}
    return embeds | {"guidance_scale": 1.0}


def pipeline_step(family: str, s: Setup) -> tuple[tuple, dict[str, Any], torch.Tensor]:
    """Run the family's pipeline one step with our denoiser in it; return the (args, kwargs)
    its denoiser was called with and the tensor it returned."""
    spec = get_family(family)
    if family == "omnigen" and importlib.util.find_spec("torchvision") is None:
        return omnigen_pipeline_step(s)
    extra = s.module.validation_components(OPTIONS)  # Cosmos' pass-through safety checker
    pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(
        s.path, **{spec.denoiser: s.denoiser}, **extra
    )
    if family == "hidream":
        pipe.default_sample_size = 8  # render the 64 px asked for, not its fixed 1024 px area
    calls: list[tuple[tuple, dict[str, Any], torch.Tensor]] = []
    handle = s.denoiser.register_forward_hook(
        lambda _m, args, kwargs, out: calls.append((args, kwargs, out[0])), with_kwargs=True
    )
    try:
        pipe(
            **pipeline_kwargs(family, s.batch),
            num_inference_steps=1,
            height=64,
            width=64,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        handle.remove()
    assert len(calls) == 1
    return calls[0]


def omnigen_pipeline_step(s: Setup) -> tuple[tuple, dict[str, Any], torch.Tensor]:
    """OmniGenPipeline's steps 3-8 for PROMPTS as pipeline_omnigen.py writes them (64 px, one
    step, CFG): used where torchvision is missing, as the pipeline's constructor builds its
    processor with torchvision's input-image transforms (unused for text-only prompts)."""
    import numpy as np
    from diffusers.pipelines.omnigen.processor_omnigen import (
        OmniGenCollator,
        OmniGenMultiModalProcessor,
    )
    from diffusers.utils.torch_utils import randn_tensor
    from transformers import AutoTokenizer

    processor = OmniGenMultiModalProcessor.__new__(OmniGenMultiModalProcessor)
    processor.text_tokenizer = AutoTokenizer.from_pretrained(s.path, subfolder="tokenizer")
    processor.collator = OmniGenCollator()
    data = processor(PROMPTS, None, height=64, width=64, use_img_cfg=False)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(
        s.path, subfolder="scheduler"
    )
    scheduler.set_timesteps(sigmas=np.linspace(1, 0, 2)[:1], device=CPU)
    latents = randn_tensor(
        (len(PROMPTS), s.channels, 8, 8), generator=torch.Generator().manual_seed(0)
    )
    kwargs = dict(
        hidden_states=torch.cat([latents] * 2),
        timestep=scheduler.timesteps[0].expand(2 * len(PROMPTS)),
        input_ids=data["input_ids"],
        input_img_latents=[],
        input_image_sizes=data["input_image_sizes"],
        attention_mask=data["attention_mask"],
        position_ids=data["position_ids"],
    )
    with torch.no_grad():
        out = s.denoiser(**kwargs, return_dict=False)[0]
    return (), kwargs, out


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_predict_matches_pipeline_denoiser_call(setup, family: str) -> None:
    s = setup(family)
    args, kwargs, out = pipeline_step(family, s)
    batch_size = len(PROMPTS)
    sample = args[0] if args else kwargs["hidden_states"]
    timestep = args[1] if len(args) > 1 else kwargs.get("timestep", kwargs.get("timesteps"))
    options, batch = dict(OPTIONS), s.batch
    if family == "flux":
        # The pipeline's tokens and sigma back to (B, C, H, W) latents and sigma * 1000.
        sample = FluxPipeline._unpack_latents(sample, 64, 64, 8)
        out = FluxPipeline._unpack_latents(out, 64, 64, 8)
        timestep = timestep * 1000
        options["flux_guidance_value"] = FLUX_GUIDANCE
    if family == "hidream":
        out = -out  # the pipeline negates the transformer's inverted velocity
    if family == "qwen_image":
        # Packed tokens back to (B, C, H, W) latents (one frame dropped), sigma to sigma * 1000.
        sample = QwenImagePipeline._unpack_latents(sample, 64, 64, 8).squeeze(2)
        out = QwenImagePipeline._unpack_latents(out, 64, 64, 8).squeeze(2)
        timestep = timestep * 1000
    if family == "auraflow":
        timestep = timestep * 1000  # the pipeline's sigma in [0, 1]
    if family == "lumina2":
        # Lumina's reversed time and velocity (the pipeline negates before its step).
        timestep = (1 - timestep) * 1000
        out = -out
    if family == "cosmos2image":
        # One-frame video latents back to images; the pipeline's EDM t = sigma / (sigma + 1)
        # is the flow-matching sigma, which the loop passes as sigma * 1000.
        sample, out = sample.squeeze(2), out.squeeze(2)
        timestep = timestep * 1000
    if family == "omnigen":
        # The conditional half of the CFG batch; OmniGen's t (0 = noise, on a 0-1 scale) and
        # data-minus-noise velocity back to sigma and noise-minus-data.
        sample, out = sample[:batch_size], -out[:batch_size]
        timestep = 1 - timestep[:batch_size]
    if family in ("pixart_sigma", "deepfloyd"):
        out = out[:, : s.channels]  # learned sigma: the pipeline keeps the epsilon half
    if family in ("sdxl", "kolors"):
        # The pipeline was given the first sample's sizes for both: so is predict.
        batch = batch | {k: v[:1].expand(batch_size, -1) for k, v in SDXL_SIZES.items()}
        ids = kwargs["added_cond_kwargs"]["time_ids"]
        torch.testing.assert_close(ids, sdxl.time_ids(batch).float())
    # pixel space: the image itself; else the VAE's downscale (DC-AE: 32)
    side = 64 // get_family(family).latent_downscale
    frames = (2,) if get_family(family).video else ()  # video latents: (B, C, F, h, w)
    assert sample.shape == (batch_size, s.channels, *frames, side, side)
    with torch.no_grad():
        pred = s.module.predict(
            s.denoiser, sample, timestep.expand(batch_size), batch, options
        ).output
    assert pred.shape == sample.shape
    torch.testing.assert_close(pred, out, rtol=1e-5, atol=1e-5)


def test_sdxl_time_ids_are_the_pipelines_per_sample(setup) -> None:
    s = setup("sdxl")
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(s.path, unet=s.denoiser)
    ids = sdxl.time_ids(s.batch)
    for i in range(len(PROMPTS)):
        expected = pipe._get_add_time_ids(
            tuple(SDXL_SIZES["original_size"][i].tolist()),
            tuple(SDXL_SIZES["crop_top_left"][i].tolist()),
            tuple(SDXL_SIZES["target_size"][i].tolist()),
            dtype=torch.float32,
            text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
        )
        torch.testing.assert_close(ids[i : i + 1].float(), expected)
    # By hand, sample 1: original (h, w), crop (top, left), target (h, w).
    assert ids[1].tolist() == [1024, 768, 0, 32, 1024, 1024]


# ------------------------------------------------------------------------------- training

# Parameters that rightly get no or a zero gradient: SD3's last joint block is
# context_pre_only, so its text queries never reach the output; Qwen-Image's last block still
# updates the text stream (text queries, output projection and MLP), which nothing reads.
# OmniGen's input-image projection only embeds conditioning images (editing).
DEAD = {
    "sd3": {
        "transformer_blocks.0.attn.add_q_proj.weight",
        "transformer_blocks.0.attn.add_q_proj.bias",
    },
    "qwen_image": {
        f"transformer_blocks.0.{name}"
        for name in (
            "attn.add_q_proj.weight",
            "attn.add_q_proj.bias",
            "attn.norm_added_q.weight",
            "attn.to_add_out.weight",
            "attn.to_add_out.bias",
            "txt_mlp.net.0.proj.weight",
            "txt_mlp.net.0.proj.bias",
            "txt_mlp.net.2.weight",
            "txt_mlp.net.2.bias",
        )
    },
    # OmniGen's input-image projection only embeds conditioning images (editing).
    "omnigen": {
        "patch_embedding.input_image_proj.weight",
        "patch_embedding.input_image_proj.bias",
    },
}


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_predict_trains_every_parameter(setup, family: str) -> None:
    s = setup(family)
    gen = torch.Generator().manual_seed(0)
    frames = (2,) if get_family(family).video else ()
    latents = torch.randn(len(PROMPTS), s.channels, *frames, 8, 8, generator=gen)
    # DDPM indices, or sigma * 1000 for the flow-matching families.
    flow = get_family(family).flow_matching
    timesteps = torch.tensor([250.0, 750.0]) if flow else torch.tensor([10, 900])
    if family == "omnigen":
        timesteps = timesteps / 1000  # its scheduler's num_train_timesteps is 1
    assert s.denoiser.is_gradient_checkpointing  # the option's default
    s.denoiser.train()
    try:
        pred = s.module.predict(
            s.denoiser, latents, timesteps, s.batch, OPTIONS, generator=gen
        ).output
        assert pred.shape == latents.shape and pred.dtype == latents.dtype
        assert torch.isfinite(pred).all()
        pred.mean().backward()
        grads = dict(s.denoiser.named_parameters())
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in grads.values())
        dead = {n for n, p in grads.items() if p.grad is None or not p.grad.any()}
        assert dead == DEAD.get(family, set())
    finally:
        s.denoiser.zero_grad(set_to_none=True)
        s.denoiser.eval()


def test_sdxl_refuses_a_unet_with_other_added_conditioning(setup) -> None:
    s = setup("sdxl")
    wrong = s.batch | {"pooled_prompt_embeds": torch.zeros(2, 40)}  # 40 + 6 * 8 != 32 + 48
    with pytest.raises(ValueError, match="refiner"):
        s.module.predict(s.denoiser, torch.zeros(2, 4, 8, 8), torch.tensor([1, 2]), wrong, OPTIONS)


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_noise_scheduler_config_is_the_pipelines(setup, family: str) -> None:
    s = setup(family)
    expected = json.loads((s.path / "scheduler" / "scheduler_config.json").read_text())
    assert s.module.noise_scheduler_config(str(s.path), OPTIONS) == expected


# ----------------------------------------------------------------------------------- loading


def test_load_denoiser_honours_source_subfolder_and_checkpointing(setup) -> None:
    s = setup("sd3")
    options = OPTIONS | {
        # A flat transformer folder ('none' subfolder); the base path is then never read.
        "pretrained_transformer_model_name_or_path": str(s.path / "transformer"),
        "pretrained_transformer_subfolder": "none",
        "gradient_checkpointing": False,
    }
    model = s.module.load_denoiser("/nonexistent", dtype=torch.float32, device=CPU, options=options)
    assert not model.is_gradient_checkpointing
    theirs = s.denoiser.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------- Flux


def flux_call(
    s: Setup,
    options: dict[str, Any],
    rng: torch.Generator | None = None,
    **batch_changes: Any,
):
    """predict's output and the guidance the transformer received."""
    seen: dict[str, Any] = {}
    handle = s.denoiser.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.update(kwargs), with_kwargs=True
    )
    latents = torch.randn(2, s.channels, 8, 8, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            pred = s.module.predict(
                s.denoiser,
                latents,
                torch.tensor([300.0, 600.0]),
                s.batch | batch_changes,
                options,
                generator=rng,
            ).output
    finally:
        handle.remove()
    return pred, seen["guidance"]


def test_flux_guidance_constant_and_random_range(setup) -> None:
    s = setup("flux")
    _, guidance = flux_call(s, OPTIONS | {"flux_guidance_value": 2.5})
    assert guidance.tolist() == [2.5, 2.5]

    options = OPTIONS | {
        "flux_guidance_mode": "random-range",
        "flux_guidance_min": 1.0,
        "flux_guidance_max": 4.0,
    }
    first = flux_call(s, options, torch.Generator().manual_seed(7))[1]
    expected = 1.0 + 3.0 * torch.rand(2, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, expected)
    assert first[0] != first[1]  # one draw per sample
    assert not torch.equal(flux_call(s, options, torch.Generator().manual_seed(8))[1], first)
    # The generator may also travel in the batch.
    in_batch = flux_call(s, options, generator=torch.Generator().manual_seed(7))[1]
    torch.testing.assert_close(in_batch, first)
    with pytest.raises(ValueError, match="Generator"):
        flux_call(s, options)


def test_flux_attention_masked_training_ignores_padding(setup) -> None:
    s = setup("flux")
    padding = s.batch["attention_mask"] == 0
    assert padding.any(axis=1).all()
    noise = torch.randn(s.batch["prompt_embeds"].shape, generator=torch.Generator().manual_seed(2))
    changed = s.batch["prompt_embeds"] + noise * padding[..., None]
    masked = OPTIONS | {"flux_attention_masked_training": True}
    base = flux_call(s, masked)[0]
    torch.testing.assert_close(flux_call(s, masked, prompt_embeds=changed)[0], base)
    # Unmasked, the padding embeddings do reach the prediction.
    unmasked_base = flux_call(s, OPTIONS)[0]
    assert not torch.allclose(flux_call(s, OPTIONS, prompt_embeds=changed)[0], unmasked_base)
    assert not torch.allclose(base, unmasked_base)


def test_flux_masked_training_refuses_maskless_kernel() -> None:
    options = OPTIONS | {
        "flux_attention_masked_training": True,
        "attention_mechanism": "native-flash",
    }
    with pytest.raises(ValueError, match="native-flash"):
        get_family_module("flux").load_denoiser(
            "/nonexistent", dtype=torch.float32, device=CPU, options=options
        )


class Wrapper(torch.nn.Module):
    """Stands in for DDP: the model under ``.module``, forward delegated."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_predict_through_a_wrapper_in_bf16(setup, family: str) -> None:
    """Config and dtype are read through the wrapper; conditioning is cast to the bf16
    weights and the prediction comes back in the latents' fp32."""
    s = setup(family)
    latents = torch.randn(2, s.channels, 8, 8, generator=torch.Generator().manual_seed(3))
    timesteps = torch.tensor([100, 800])
    wrapped = Wrapper(copy.deepcopy(s.denoiser).to(torch.bfloat16))
    with torch.no_grad():
        ref = s.module.predict(s.denoiser, latents, timesteps, s.batch, OPTIONS).output
        pred = s.module.predict(wrapped, latents, timesteps, s.batch, OPTIONS).output
    assert pred.dtype == torch.float32
    torch.testing.assert_close(pred, ref, rtol=0.05, atol=0.05)

"""Tiny-model zoo: every family builds offline and loads through the real diffusers classes."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network

import diffusers
import numpy as np
import pytest
import torch

from st_ray import zoo
from st_ray.models.family import get_family_module
from st_ray.zoo.__main__ import main as zoo_main

PIPELINES = {
    "sd1x": "StableDiffusionPipeline",
    "sd2x": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux": "FluxPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "pixart_sigma": "PixArtSigmaPipeline",
    "kolors": "KolorsPipeline",
    "hidream": "HiDreamImagePipeline",
    "qwen_image": "QwenImagePipeline",
    "deepfloyd": "IFPipeline",
    "sana": "SanaPipeline",
    "lumina2": "Lumina2Pipeline",
    "auraflow": "AuraFlowPipeline",
    "cosmos2image": "Cosmos2TextToImagePipeline",
    "omnigen": "OmniGenPipeline",
    "wan": "WanPipeline",
}

# Component folders each family must have, as in the real checkpoints.
LAYOUT = {
    "sd1x": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sd2x": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sdxl": (
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    ),
    "flux": (
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    ),
    "sd3": (
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "scheduler",
    ),
    "pixart_sigma": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    "kolors": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "hidream": (
        "transformer",
        "vae",
        *(f"text_encoder{i}" for i in ("", "_2", "_3", "_4")),
        *(f"tokenizer{i}" for i in ("", "_2", "_3", "_4")),
        "scheduler",
    ),
    "qwen_image": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    "deepfloyd": ("unet", "text_encoder", "tokenizer", "scheduler"),  # pixel space: no VAE
    "sana": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    "lumina2": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    "auraflow": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    "cosmos2image": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    # No text encoder: the transformer embeds the tokenizer's ids itself.
    "omnigen": ("transformer", "vae", "tokenizer", "scheduler"),
    "wan": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
}
# The sentencepiece/BPE files the real tokenizers ship next to tokenizer.json.
LEGACY_TOKENIZER_FILES = {
    "CLIP": {"vocab.json", "merges.txt"},
    "T5": {"spiece.model"},
    "Gemma": {"tokenizer.model"},
    "Qwen2": {"vocab.json", "merges.txt"},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """Build each family once per module (seed 0), lazily."""
    root = tmp_path_factory.mktemp("zoo")
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = zoo.build(family, root / family, seed=0)
        return cache[family]

    return get


def test_families_registered() -> None:
    assert set(zoo.FAMILIES) == set(PIPELINES)


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_layout(built, family: str) -> None:
    path = built(family)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINES[family]
    for sub in LAYOUT[family]:
        # Kolors' ChatGLM classes live in diffusers.pipelines.kolors (library "kolors").
        assert index[sub][0] in ("diffusers", "transformers", "kolors"), sub
        folder = path / sub
        assert folder.is_dir(), sub
        if sub.startswith("tokenizer") and index[sub][1] == "ChatGLMTokenizer":
            # Kolors' ChatGLM tokenizer is a slow sentencepiece tokenizer (no tokenizer.json).
            assert (folder / "tokenizer.model").is_file()
        elif sub.startswith("tokenizer"):
            assert (folder / "tokenizer.json").is_file()
            # Llama 3 ships tokenizer.json alone.
            legacy = next(
                (v for k, v in LEGACY_TOKENIZER_FILES.items() if k in index[sub][1]), set()
            )
            assert legacy <= {f.name for f in folder.iterdir()}, sub
        elif sub == "scheduler":
            assert (folder / "scheduler_config.json").is_file()
        else:
            assert (folder / "config.json").is_file(), sub
            assert list(folder.glob("*.safetensors")), sub


def test_family_specifics(built) -> None:
    sched = json.loads((built("sd2x") / "scheduler/scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"
    unet = json.loads((built("sdxl") / "unet/config.json").read_text())
    assert unet["addition_embed_type"] == "text_time"
    vae = json.loads((built("flux") / "vae/config.json").read_text())
    assert vae["latent_channels"] == 16 and vae["shift_factor"] == pytest.approx(0.1159)
    flux = json.loads((built("flux") / "transformer/config.json").read_text())
    assert flux["guidance_embeds"] is True


def test_subfolder_loading(built) -> None:
    # Components load one by one, the way training code loads real checkpoints.
    from transformers import CLIPTextModelWithProjection, T5EncoderModel, T5TokenizerFast

    path = built("sdxl")
    unet = diffusers.UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    te2 = CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2")
    assert unet.config.cross_attention_dim == 2 * te2.config.hidden_size
    flux = built("flux")
    tok = T5TokenizerFast.from_pretrained(flux, subfolder="tokenizer_2")
    t5 = T5EncoderModel.from_pretrained(flux, subfolder="text_encoder_2")
    ids = tok("a photo of a cat", return_tensors="pt").input_ids
    assert ids[0, -1].item() == tok.eos_token_id and int(ids.max()) < t5.config.vocab_size


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_render(built, family: str) -> None:
    if family == "omnigen":
        # OmniGenPipeline's constructor builds an OmniGenMultiModalProcessor, which diffusers
        # only defines with torchvision; training and its tests do without it.
        pytest.importorskip("torchvision", reason="OmniGenPipeline needs torchvision")
    # Components the pipeline cannot run without (Cosmos' pass-through safety checker).
    extra = get_family_module(family).validation_components({})
    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(built(family), **extra)
    pipe.set_progress_bar_config(disable=True)
    kwargs: dict = {}
    if family == "pixart_sigma":
        kwargs = {"use_resolution_binning": False, "clean_caption": False}
    if family == "hidream":
        # The pipeline rescales every request to the area of default_sample_size latents
        # squared (1024 px by default); shrink that area to the 64 px asked for.
        pipe.default_sample_size = 8
    if family == "deepfloyd":
        kwargs = {"clean_caption": False}
    if family == "sana":
        kwargs = {"use_resolution_binning": False}
    if family == "wan":
        kwargs = {"num_frames": 5, "max_sequence_length": 64}
    out = pipe(
        "a photo of a cat",
        height=64,
        width=64,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    if family == "wan":  # a video: the first of its 5 frames
        assert out.frames.shape == (1, 5, 64, 64, 3)
        out = out.frames[:, 0]
    else:
        out = out.images
    assert out.shape == (1, 64, 64, 3)
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_unknown_family(tmp_path) -> None:
    with pytest.raises(ValueError, match="accepted families: .*sd1x, sd2x, sd3, sdxl") as err:
        zoo.build("sd9", tmp_path / "x")
    assert "'sd9'" in str(err.value)
    with pytest.raises(ValueError, match="accepted families"):
        zoo.ensure("sd9", tmp_path)
    assert not (tmp_path / "x").exists()


def test_deterministic(built, tmp_path) -> None:
    component = "transformer/diffusion_pytorch_model.safetensors"
    first = (built("pixart_sigma") / component).read_bytes()
    rng_before = torch.random.get_rng_state()
    again = zoo.build("pixart_sigma", tmp_path / "same", seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched
    other = zoo.build("pixart_sigma", tmp_path / "other", seed=1)
    assert (again / component).read_bytes() == first
    assert (other / component).read_bytes() != first
    # Tokenizers do not depend on the seed.
    tok = "tokenizer/spiece.model"
    assert (other / tok).read_bytes() == (again / tok).read_bytes()


def test_ensure_reuses(tmp_path) -> None:
    path = zoo.ensure("pixart_sigma", tmp_path, seed=3)
    assert path == tmp_path / f"pixart_sigma-seed3-v{zoo.RECIPE_VERSION}"
    stamp = (path / "model_index.json").stat().st_mtime_ns
    assert zoo.ensure("pixart_sigma", tmp_path, seed=3) == path
    assert (path / "model_index.json").stat().st_mtime_ns == stamp  # not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"pixart_sigma-seed3-v{zoo.RECIPE_VERSION}"
    ]  # no temp left


def test_cli(tmp_path, capsys) -> None:
    assert zoo_main(["list"]) == 0
    assert capsys.readouterr().out.split() == list(zoo.FAMILIES)
    assert zoo_main(["build", "--family", "sd1x", "--out", str(tmp_path / "m"), "--seed", "2"]) == 0
    assert (tmp_path / "m" / "model_index.json").is_file()

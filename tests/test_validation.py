"""Validation images on tiny zoo models (sd1x, flux) and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from st_ray import zoo
from st_ray.plan import build_plan
from st_ray.train.model_card import write_model_card
from st_ray.train.validation import Validator
from st_ray.train.validation_pipeline import build_scheduler
from st_ray.train.validation_settings import (
    BUILTIN_PROMPTS,
    ValidationSettings,
    is_due,
    parse_resolutions,
    prompt_list,
)

BASE_OPTIONS = {
    "validation_prompt": "a red square",
    "num_validation_images": 2,
    "validation_resolution": "64,64x32",
    "validation_num_inference_steps": 2,
    "validation_seed": 11,
    "validation_disable_unconditional": True,
}
# One small image without CFG (one UNet pass per step): for the tests about something else.
FAST = {
    **BASE_OPTIONS,
    "validation_resolution": "32",
    "num_validation_images": 1,
    "validation_guidance": 1.0,
}


def _plan(root: Path, family: str, model: Path, datasets: list | None = None, **options):
    """A plan for ``model`` over an empty image folder (validation needs no caches)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    datasets = datasets or [
        {
            "id": "photos",
            "type": "local",
            "instance_data_dir": str(images),
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel_area",
            "cache_dir_vae": str(root / "cache" / "vae"),
        },
        {
            "id": "text",
            "dataset_type": "text_embeds",
            "default": True,
            "type": "local",
            "cache_dir": str(root / "cache" / "text"),
        },
    ]
    (root / "multidatabackend.json").write_text(json.dumps(datasets))
    config = {
        "model_family": family,
        "pretrained_model_name_or_path": str(model),
        "data_backend_config": str(root / "multidatabackend.json"),
        "output_dir": str(root / "out"),
        "lora_rank": 4,
        "seed": 3,
        **options,
    }
    (root / "config.json").write_text(json.dumps(config))
    return build_plan(root / "config.json", [], {})


@pytest.fixture(scope="module")
def sd1x(zoo_root: Path):
    from diffusers import UNet2DConditionModel

    model = zoo.ensure("sd1x", zoo_root)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    return model, unet


def _png_bytes(paths: list[Path]) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def test_sd1x_renders_sizes_and_repeats_with_the_seed(sd1x, tmp_path: Path) -> None:
    model, unet = sd1x
    unet.train()
    validator = Validator(_plan(tmp_path, "sd1x", model, **BASE_OPTIONS), unet, torch.device("cpu"))
    paths = validator.run(5)
    folder = tmp_path / "out" / "validation" / "step-5"
    assert paths == [
        folder / name
        for name in (
            "validation-64x64-0.png",
            "validation-64x64-1.png",
            "validation-64x32-0.png",
            "validation-64x32-1.png",
        )
    ]
    assert [Image.open(p).size for p in paths] == [(64, 64), (64, 64), (64, 32), (64, 32)]
    assert "Seed: 12" in Image.open(paths[1]).text["parameters"]
    # The trained object itself is the pipeline's UNet, back in training mode afterwards.
    assert validator.pipeline.unet is unet and unet.training
    first = _png_bytes(paths)
    assert first[0] != first[1]  # seeds 11 and 12
    assert validator.run(5) == paths  # a step renders once
    again = validator.run(6)
    assert _png_bytes(again) == first  # same seed, same weights: same bytes


def test_randomized_seeds_differ(sd1x, tmp_path: Path) -> None:
    model, unet = sd1x
    plan = _plan(tmp_path, "sd1x", model, **FAST, validation_randomize=True)
    validator = Validator(plan, unet, torch.device("cpu"))
    assert _png_bytes(validator.run(1)) != _png_bytes(validator.run(2))


def test_scheduler_swap_on_sd1x(sd1x, tmp_path: Path) -> None:
    from diffusers import EulerAncestralDiscreteScheduler, PNDMScheduler

    model, unet = sd1x
    plain = Validator(_plan(tmp_path / "a", "sd1x", model, **FAST), unet, torch.device("cpu"))
    plain.run(1)
    assert isinstance(plain.pipeline.scheduler, PNDMScheduler)  # the model's own default
    swapped = Validator(
        _plan(tmp_path / "b", "sd1x", model, **FAST, validation_noise_scheduler="euler-a"),
        unet,
        torch.device("cpu"),
    )
    (path,) = swapped.run(1)
    assert isinstance(swapped.pipeline.scheduler, EulerAncestralDiscreteScheduler)
    assert Image.open(path).size == (32, 32)


def test_lora_denoiser_and_ema_comparison(sd1x, tmp_path: Path) -> None:
    """The worker's case: a PEFT LoRA on the UNet, EMA weights rendered after the trained ones."""
    from diffusers import UNet2DConditionModel

    from st_ray.train.adapters import add_lora
    from st_ray.train.ema import EMAModel

    model, _ = sd1x
    plan = _plan(tmp_path, "sd1x", model, **FAST)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").requires_grad_(False)
    add_lora(unet, "sd1x", plan.options)
    lora = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    ema = EMAModel(lora, decay=0.0)  # its shadow: the LoRA as it is now (B = 0)
    validator = Validator(plan, unet, torch.device("cpu"), ema=ema)
    assert [p.name for p in validator.run(0)] == ["validation-32x32-0.png"]  # no EMA at step 0
    with torch.no_grad():
        for name, p in lora.items():
            if "lora_B" in name:
                p.fill_(0.05)  # "training" moved the adapter away from the EMA
    trained, averaged = validator.run(3)
    assert (trained.name, averaged.name) == ("validation-32x32-0.png", "validation-32x32-0-ema.png")
    base = (tmp_path / "out" / "validation" / "step-0" / "validation-32x32-0.png").read_bytes()
    assert averaged.read_bytes() == base != trained.read_bytes()
    assert all(bool((p == 0.05).all()) for n, p in lora.items() if "lora_B" in n)  # restored


def test_flux_renders_and_refuses_ddim(zoo_root: Path, tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    model = zoo.ensure("flux", zoo_root)
    transformer = FluxTransformer2DModel.from_pretrained(model, subfolder="transformer")
    options = {**BASE_OPTIONS, "validation_resolution": "32,48x32", "num_validation_images": 1}
    plan = _plan(tmp_path / "ok", "flux", model, **options, validation_guidance=3.5)
    paths = Validator(plan, transformer, torch.device("cpu")).run(2)
    assert [Image.open(p).size for p in paths] == [(32, 32), (48, 32)]

    unipc = _plan(tmp_path / "unipc", "flux", model, **options, validation_noise_scheduler="unipc")
    assert len(Validator(unipc, transformer, torch.device("cpu")).run(2)) == 2

    ddim = _plan(tmp_path / "ddim", "flux", model, **options, validation_noise_scheduler="ddim")
    with pytest.raises(ValueError, match="'ddim' does not fit this flow-matching model"):
        Validator(ddim, transformer, torch.device("cpu"))


def _settings(**options) -> ValidationSettings:
    base = {"model_family": "sd1x", "validation_prompt": "x", "validation_step_interval": 100}
    return ValidationSettings.from_options({**base, **options}, train_resolution=64)


def test_is_due() -> None:
    plain = _settings()
    assert is_due(plain, 0, False, 0)  # the benchmark is on by default
    assert not is_due(_settings(disable_benchmark=True), 0, False, 0)
    assert is_due(_settings(disable_benchmark=True, validation_on_startup=True), 0, False, 0)
    assert [s for s in range(1, 301) if is_due(plain, s, False, 0)] == [100, 200, 300]
    assert not is_due(plain, 100, True, 1)  # no epoch interval set
    epochs = _settings(validation_epoch_interval=2)
    assert [e for e in range(1, 7) if is_due(epochs, 37 * e, True, e)] == [2, 4, 6]
    assert not is_due(_settings(validation_disable=True), 100, False, 0)
    assert not is_due(_settings(validation_prompt=None), 100, False, 0)  # nothing to render


def test_settings_from_options(tmp_path: Path) -> None:
    assert parse_resolutions("1024, 1216x832,1024", 8) == ((1024, 1024), (1216, 832))
    assert parse_resolutions("100x60", 16) == ((96, 64),)
    with pytest.raises(ValueError, match="cannot read 'big'"):
        parse_resolutions("big", 8)
    assert _settings().resolutions == ((64, 64),)
    assert _settings(model_family="flux").resolutions == ((64, 64),)
    flux = ValidationSettings.from_options(
        {"model_family": "flux", "validation_prompt": "x"}, train_resolution=1000
    )
    assert flux.resolutions == ((1008, 1008),)
    assert _settings(seed=5).seed == 5 and _settings(seed=5, validation_seed=9).seed == 9

    library = tmp_path / "library.json"
    library.write_text(json.dumps({"cat photo": "a cat", "dog": {"prompt": "a dog"}}))
    prompts = prompt_list(
        {"validation_prompt": "x", "user_prompt_library": "library.json"}, tmp_path
    )
    assert prompts == (
        ("validation", "x"),
        ("cat_photo", "a cat"),
        ("dog", "a dog"),
        ("unconditional", ""),
    )
    builtin = prompt_list(
        {"validation_prompt_library": True, "validation_disable_unconditional": True}
    )
    assert [p for _, p in builtin] == list(BUILTIN_PROMPTS.values())


def test_inference_timestep_spacing_reaches_the_sampler() -> None:
    """inference_scheduler_timestep_spacing shapes the validation sampler's timesteps;
    rescale_betas_zero_snr forces 'trailing' (sampling must start at the terminal step)."""
    from diffusers import PNDMScheduler

    def timesteps(**options) -> list[int]:
        sampler = build_scheduler(PNDMScheduler(), _settings(**options), flow_matching=False)
        sampler.set_timesteps(4)
        return [int(t) for t in sampler.timesteps]

    leading = timesteps(inference_scheduler_timestep_spacing="leading")
    trailing = timesteps(inference_scheduler_timestep_spacing="trailing")
    assert timesteps() == trailing  # SimpleTuner's default
    assert leading[0] < trailing[0] == 999  # 'trailing' starts at the last training step
    assert leading != timesteps(inference_scheduler_timestep_spacing="linspace")
    zero_snr = dict(rescale_betas_zero_snr=True, inference_scheduler_timestep_spacing="leading")
    assert timesteps(**zero_snr) == trailing


def test_model_card_has_usage_and_no_secrets(sd1x, tmp_path: Path, zoo_root: Path) -> None:
    model, _ = sd1x
    images = tmp_path / "images"
    images.mkdir()
    datasets = [
        {
            "id": "s3-photos",
            "type": "aws",
            "aws_bucket_name": "photos",
            "aws_endpoint_url": "http://127.0.0.1:9",
            "aws_access_key_id": "AKIAEXAMPLEKEYID1234",
            "aws_secret_access_key": "very-secret-key-value",
        },
        {"id": "local", "type": "local", "instance_data_dir": str(images), "resolution": 64},
    ]
    plan = _plan(
        tmp_path,
        "sd1x",
        model,
        datasets,
        mlflow_tracking_uri="http://user:hunter2@127.0.0.1:5000",
        model_card_note="Trained for the test suite.",
        lora_alpha=8,
    )
    out = tmp_path / "out"
    image = out / "validation" / "step-4" / "validation-64x64-0.png"
    card = write_model_card(
        out, plan, steps=4, final_loss=0.125, validation_images=[image], image_counts={"local": 7}
    )
    text = card.read_text()
    assert card == out / "README.md"
    assert text.startswith("---\n") and f'base_model: "{model}"' in text
    for tag in ('"st_ray"', '"diffusers"', '"lora"', '"sd1x"', '"not-for-all-audiences"'):
        assert f"- {tag}" in text
    assert 'license: "unknown"' in text
    assert f'pipeline.load_lora_weights("{out}")' in text
    assert "StableDiffusionPipeline.from_pretrained(" in text
    assert "| LoRA rank | 4 |" in text and "| LoRA alpha | 8 |" in text
    assert "Trained for the test suite." in text and "final training loss 0.125" in text
    assert "| local | local | 64 (pixel_area) |" in text and "| 7 |" in text
    assert "(validation/step-4/validation-64x64-0.png)" in text
    for secret in ("very-secret-key-value", "AKIAEXAMPLEKEYID1234", "hunter2"):
        assert secret not in text

    full = _plan(tmp_path / "full", "sd1x", model, model_type="full", model_card_safe_for_work=True)
    text = write_model_card(out / "full", full, steps=2, final_loss=None).read_text()
    assert 'AutoModel.from_pretrained(\n    "' in text and 'subfolder="unet"' in text
    assert "unet=unet" in text and '- "full"' in text and "not-for-all-audiences" not in text

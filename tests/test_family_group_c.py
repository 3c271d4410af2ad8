"""qwen_image and deepfloyd: LoRA training through the real loop with a
validation image, exports diffusers loads, a full fine-tune, and the family specifics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from st_ray import zoo
from st_ray.data.pipeline import build_caches
from st_ray.models import get_family
from st_ray.plan import build_plan
from st_ray.train.trainer import fit_in_process
from tests.test_training import _write_config

pytestmark = pytest.mark.usefixtures("ray_local")  # the caches are built with Ray Data

CPU = torch.device("cpu")
# One 32 px validation image in two steps, rendered at the end of the run.
VALIDATION = {
    "validation_prompt": "a red square",
    "validation_resolution": "32",
    "num_validation_images": 1,
    "validation_num_inference_steps": 2,
    "validation_guidance": 1.0,
    "validation_disable_unconditional": True,
}


@pytest.fixture(scope="module")
def setups(tmp_path_factory, zoo_root, example_dataset, family_cache_root):
    """(model, config) per family, caches built once per module."""
    made: dict[str, tuple[Path, Path]] = {}

    def get(family: str) -> tuple[Path, Path]:
        if family not in made:
            root = tmp_path_factory.mktemp(f"group-c-{family}")
            model = zoo.ensure(family, zoo_root)
            config = _write_config(
                root,
                model,
                example_dataset.images_dir,
                family,
                family_cache_root,
                max_train_steps=2,
            )
            build_caches(build_plan(config, [], {}))
            made[family] = (model, config)
        return made[family]

    return get


def _train(config: Path, out: Path, ckpt: Path, *extra: str):
    overrides = [f"--{k}={v}" for k, v in VALIDATION.items()]
    plan = build_plan(config, ["--output_dir", str(out), *overrides, *extra], {})
    progress, reported = fit_in_process(plan, ckpt)
    assert progress.global_step == 2 and [r["step"] for r in reported] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in reported)
    image = out / "validation" / "step-2" / "validation-32x32-0.png"
    assert image.is_file()
    return image


def _lora_loads(family: str, model: Path, out: Path) -> None:
    """The exported LoRA loads through the pipeline's own loader, every tensor landing."""
    import diffusers
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from st_ray.train.adapters import WEIGHT_NAME

    spec = get_family(family)
    pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(model)
    saved = {
        k.removeprefix(f"{spec.denoiser}."): v for k, v in load_file(out / WEIGHT_NAME).items()
    }
    pipe.load_lora_weights(out)
    denoiser = getattr(pipe, spec.denoiser)
    loaded = get_peft_model_state_dict(denoiser, adapter_name="default_0")
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in saved.items())


# ---------------------------------------------------------------------------- qwen_image


def test_qwen_image_lora_trains_validates_and_loads(setups, tmp_path: Path) -> None:
    from PIL import Image

    model, config = setups("qwen_image")
    image = _train(config, tmp_path / "out", tmp_path / "ckpt")
    assert Image.open(image).size == (32, 32)
    _lora_loads("qwen_image", model, tmp_path / "out")


def test_qwen_image_cache_padding_matches_the_pipelines_own_encoding(zoo_root) -> None:
    """predict on the cache's fixed-length, zero-padded text equals the transformer fed the
    pipeline's own encode_prompt (padded only to the batch's longest prompt)."""
    from diffusers import QwenImagePipeline

    from st_ray.models.family import get_family_module

    path = zoo.ensure("qwen_image", zoo_root)
    module = get_family_module("qwen_image")
    options = {"tokenizer_max_length": None, "gradient_checkpointing": False}
    encoders = module.load_text_encoders(str(path), device=CPU, dtype=torch.float32, options={})
    prompts = ["a photo of a cat on a wooden table", "dog"]
    cached = {
        k: torch.from_numpy(v)
        for k, v in module.encode_prompts(encoders, prompts, options=options).items()
    }
    pipe = QwenImagePipeline.from_pretrained(path)
    latents = torch.randn(2, 16, 8, 6, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([300.0, 800.0])
    with torch.no_grad():
        embeds, mask = pipe.encode_prompt(prompts, device=CPU)
        assert embeds.shape[1] < cached["prompt_embeds"].shape[1]
        ours = module.predict(pipe.transformer, latents, timesteps, cached, options).output
        own = {"prompt_embeds": embeds, "prompt_embeds_mask": mask}
        theirs = module.predict(pipe.transformer, latents, timesteps, own, options).output
    assert ours.shape == latents.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_qwen_image_edit_flavours_are_refused_at_validation(tmp_path: Path) -> None:
    from st_ray.config.errors import ConfigError

    config = tmp_path / "config.json"
    config.write_text(
        '{"model_family": "qwen_image", "model_flavour": "edit-v1", "max_train_steps": 1, '
        f'"output_dir": "{tmp_path / "out"}"}}'
    )
    with pytest.raises(ConfigError, match="edit-v1.*conditioning-image datasets"):
        build_plan(config, [], {})


# ----------------------------------------------------------------------------- deepfloyd


def test_deepfloyd_caches_pixels_and_lora_trains_validates_and_loads(
    setups, tmp_path: Path
) -> None:
    from PIL import Image

    from st_ray.train import data_feed

    model, config = setups("deepfloyd")
    # Pixel space: the cache holds the 64 px images themselves, in [-1, 1].
    plan = build_plan(config, [], {})
    (entry,) = [d for d in plan.datasets if d.is_image]
    samples = data_feed.load_dataset_samples(str(entry["cache_dir_vae"]), entry)
    hashes = [s.content_hash for s in samples.samples][:4]
    pixels = data_feed.LatentStore(str(entry["cache_dir_vae"])).load(hashes)
    for value in pixels.values():
        assert value.shape[0] == 3 and value.shape[1] * value.shape[2] == 64 * 64
        assert -1.0 <= float(value.min()) < 0.0 < float(value.max()) <= 1.0

    image = _train(config, tmp_path / "out", tmp_path / "ckpt")
    assert Image.open(image).size == (32, 32)
    _lora_loads("deepfloyd", model, tmp_path / "out")


def test_deepfloyd_full_finetune_with_soft_min_snr_saves_a_loadable_unet(
    setups, tmp_path: Path
) -> None:
    from diffusers import IFPipeline, UNet2DConditionModel

    model, config = setups("deepfloyd")
    out = tmp_path / "full"
    _train(
        config,
        out,
        tmp_path / "ckpt",
        "--model_type=full",
        "--use_soft_min_snr=true",
        "--snr_gamma=5",
        "--soft_min_snr_sigma_data=1.0",
    )
    trained = UNet2DConditionModel.from_pretrained(out / "unet")
    base = dict(UNet2DConditionModel.from_pretrained(model, subfolder="unet").named_parameters())
    assert not any(".lora_" in name for name, _ in trained.named_parameters())
    assert any(not torch.equal(p, base[name]) for name, p in trained.named_parameters())
    # The saved UNet drops into the pipeline and samples.
    pipe = IFPipeline.from_pretrained(model, unet=trained)
    images = pipe(
        "a red square",
        height=32,
        width=32,
        num_inference_steps=2,
        output_type="np",
        clean_caption=False,
    ).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_deepfloyd_stage_ii_is_refused_at_validation(tmp_path: Path) -> None:
    from st_ray.config.errors import ConfigError

    config = tmp_path / "config.json"
    config.write_text(
        '{"model_family": "deepfloyd", "model_flavour": "ii-large-1.2b", "max_train_steps": 1, '
        f'"output_dir": "{tmp_path / "out"}"}}'
    )
    with pytest.raises(ConfigError, match="ii-large-1.2b.*super-resolution.*stage I"):
        build_plan(config, [], {})

"""cosmos2image: LoRA and full fine-tune through the real loop with a validation image, exports
diffusers loads, and the Wan-VAE latent normalisation the pipeline inverts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from st_ray import zoo
from st_ray.data.pipeline import build_caches
from st_ray.models import cosmos2image
from st_ray.plan import build_plan
from st_ray.train.trainer import fit_in_process
from tests.test_training import _write_config

pytestmark = pytest.mark.usefixtures("ray_local")  # the caches are built with Ray Data

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
def setup(tmp_path_factory, zoo_root, example_dataset, family_cache_root) -> tuple[Path, Path]:
    """(model, config), caches built once."""
    root = tmp_path_factory.mktemp("cosmos")
    model = zoo.ensure("cosmos2image", zoo_root)
    config = _write_config(
        root,
        model,
        example_dataset.images_dir,
        "cosmos2image",
        family_cache_root,
        max_train_steps=2,
    )
    build_caches(build_plan(config, [], {}))
    return model, config


def _train(config: Path, out: Path, ckpt: Path, *extra: str) -> None:
    from PIL import Image

    overrides = [f"--{k}={v}" for k, v in VALIDATION.items()]
    plan = build_plan(config, ["--output_dir", str(out), *overrides, *extra], {})
    progress, reported = fit_in_process(plan, ckpt)
    assert progress.global_step == 2 and [r["step"] for r in reported] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in reported)
    image = out / "validation" / "step-2" / "validation-32x32-0.png"
    assert Image.open(image).size == (32, 32)


def _pipeline(model: Path, **components):
    from diffusers import Cosmos2TextToImagePipeline

    extra = cosmos2image.validation_components({})
    return Cosmos2TextToImagePipeline.from_pretrained(model, **extra, **components)


def test_cosmos_lora_trains_validates_and_loads(setup, tmp_path: Path) -> None:
    """The exported LoRA loads into the pipeline's transformer (the Cosmos pipeline has no
    LoRA loader mixin: the transformer's load_lora_adapter is diffusers' way), every tensor
    landing, and the pipeline renders with it."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from st_ray.train.adapters import WEIGHT_NAME

    model, config = setup
    out = tmp_path / "out"
    _train(config, out, tmp_path / "ckpt")
    saved = {k.removeprefix("transformer."): v for k, v in load_file(out / WEIGHT_NAME).items()}
    pipe = _pipeline(model)
    pipe.transformer.load_lora_adapter(out, prefix="transformer", weight_name=WEIGHT_NAME)
    (name,) = pipe.transformer.peft_config
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=name)
    assert set(loaded) == set(saved) and len(saved) == 16  # attn1 + attn2: 8 modules, A and B
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in saved.items())


def test_cosmos_full_finetune_saves_a_loadable_transformer(setup, tmp_path: Path) -> None:
    from diffusers import CosmosTransformer3DModel

    model, config = setup
    out = tmp_path / "full"
    _train(config, out, tmp_path / "ckpt", "--model_type=full")
    trained = CosmosTransformer3DModel.from_pretrained(out / "transformer")
    base = dict(
        CosmosTransformer3DModel.from_pretrained(model, subfolder="transformer").named_parameters()
    )
    assert not any(".lora_" in name for name, _ in trained.named_parameters())
    assert any(not torch.equal(p, base[name]) for name, p in trained.named_parameters())
    # The saved transformer drops into the pipeline (with CFG) and samples.
    images = _pipeline(model, transformer=trained)(
        "a red square", height=32, width=32, num_inference_steps=2, output_type="np"
    ).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_cosmos_latents_are_what_the_pipeline_decodes(zoo_root) -> None:
    """The cache's latents, put through the pipeline's own pre-decode step (times latents_std
    over sigma_data plus latents_mean), give back the VAE posterior mean (zero noise)."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(zoo.ensure("cosmos2image", zoo_root), subfolder="vae")
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        cached = cosmos2image.encode_latents(vae, pixels, lambda shape: torch.zeros(1, *shape))
        mean = vae.encode(pixels.unsqueeze(2)).latent_dist.mean
    assert cached.shape == (1, 16, 4, 4)
    shape = (1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(shape)
    shift = torch.tensor(vae.config.latents_mean).view(shape)
    decoded = cached.unsqueeze(2) * std / cosmos2image.SIGMA_DATA + shift
    torch.testing.assert_close(decoded, mean, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cached, mean.squeeze(2))  # the normalisation is not a no-op


def test_cosmos_validation_refuses_other_samplers_before_training(setup) -> None:
    """Only the pipeline's own Euler scheduler runs its EDM loop: another sampler is refused
    when the run's validator is made, before any step."""
    from st_ray.train.validation import Validator

    _, config = setup
    overrides = [f"--{k}={v}" for k, v in VALIDATION.items()]
    plan = build_plan(config, [*overrides, "--validation_noise_scheduler=unipc"], {})
    with pytest.raises(ValueError, match="validation_noise_scheduler='unipc'.*'euler'"):
        Validator(plan, torch.nn.Linear(1, 1), torch.device("cpu"))
    checker = cosmos2image.validation_components({})["safety_checker"]
    assert checker.check_text_safety("anything") and checker.check_video_safety(3) == 3

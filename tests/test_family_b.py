"""Training for the LLM-conditioned families (kolors, hidream, omnigen): per family a LoRA
trains two steps in process, its export loads into the family's diffusers pipeline and a
validation image is rendered; one family also trains in full."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from st_ray import zoo
from st_ray.config.plan import build_plan
from st_ray.data.pipeline import build_caches
from st_ray.train.trainer import fit_in_process
from tests.test_training import _write_config

FAMILIES = [f for f in ("kolors", "hidream", "omnigen") if f in zoo.FAMILIES]
# One 32 px image without CFG, rendered after the last of two steps.
VALIDATION = {
    "validation_prompt": "a red square",
    "validation_resolution": "32",
    "num_validation_images": 1,
    "validation_guidance": 1.0,
    "validation_num_inference_steps": 2,
    "validation_seed": 5,
    "validation_disable_unconditional": True,
    "validation_step_interval": 2,
    "disable_benchmark": True,
}


@pytest.fixture(scope="module")
def setups(tmp_path_factory, zoo_root, example_dataset):
    """(model, config) per family with caches built once (caching dominates the time)."""
    made: dict[str, tuple[Path, Path]] = {}

    def get(family: str) -> tuple[Path, Path]:
        if family not in made:
            root = tmp_path_factory.mktemp(f"fam-b-{family}")
            model = zoo.ensure(family, zoo_root)
            config = _write_config(
                root,
                model,
                example_dataset.images_dir,
                family,
                checkpoint_step_interval=None,
                **VALIDATION,
            )
            build_caches(build_plan(config, [], {}))
            made[family] = (model, config)
        return made[family]

    return get


def _train(config: Path, out: Path, ckpt: Path, *extra: str):
    plan = build_plan(config, ["--output_dir", str(out), "--max_train_steps", "2", *extra], {})
    progress, reported = fit_in_process(plan, ckpt)
    assert progress.global_step == 2 and [r["step"] for r in reported] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in reported)
    return reported


def _validation_image(out: Path) -> Image.Image:
    (path,) = sorted((out / "validation").rglob("*.png"))
    image = Image.open(path)
    assert image.size == (32, 32)
    assert np.asarray(image).std() > 0  # a rendered picture, not a blank
    return image


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_exports_and_validates(family: str, setups, tmp_path: Path) -> None:
    import diffusers
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from st_ray.models import get_family
    from st_ray.train.adapters import WEIGHT_NAME

    model, config = setups(family)
    out = tmp_path / "lora"
    _train(config, out, tmp_path / "ckpt")
    _validation_image(out)

    spec = get_family(family)
    pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(model)
    pipe.load_lora_weights(out)
    denoiser = getattr(pipe, spec.denoiser)
    assert pipe.get_list_adapters() == {spec.denoiser: ["default_0"]}
    saved = {
        k.removeprefix(f"{spec.denoiser}."): v for k, v in load_file(out / WEIGHT_NAME).items()
    }
    loaded = get_peft_model_state_dict(denoiser, adapter_name="default_0")
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in saved.items())


def test_kolors_full_finetune_saves_a_loadable_unet(setups, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    model, config = setups("kolors")
    out = tmp_path / "full"
    _train(config, out, tmp_path / "ckpt", "--model_type", "full", "--validation_disable")
    trained = UNet2DConditionModel.from_pretrained(out / "unet")
    base = dict(UNet2DConditionModel.from_pretrained(model, subfolder="unet").named_parameters())
    assert not any(".lora_" in name for name, _ in trained.named_parameters())
    assert any(not torch.equal(p, base[name]) for name, p in trained.named_parameters())

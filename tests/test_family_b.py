"""Training for the LLM-conditioned families (kolors, hidream; omnigen has its own file): per family a LoRA
trains two steps in process, its export loads into the family's diffusers pipeline and a
validation image is rendered; one family also trains in full."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from st_ray import zoo
from st_ray.data.pipeline import build_caches
from st_ray.plan import build_plan
from st_ray.train.trainer import fit_in_process
from tests.test_training import _write_config

# Caching runs on Ray Data: share the session instance.
pytestmark = pytest.mark.usefixtures("ray_local")

FAMILIES = [f for f in ("kolors", "hidream") if f in zoo.FAMILIES]
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
def setups(tmp_path_factory, zoo_root, example_dataset, family_cache_root):
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
                family_cache_root,
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


def _validation_image(out: Path, family: str) -> Image.Image:
    (path,) = sorted((out / "validation").rglob("*.png"))
    image = Image.open(path)
    # HiDream included: its prepare_render makes the pipeline honour the size.
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
    _validation_image(out, family)

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


def test_hidream_load_balancing_loss(zoo_root) -> None:
    """hidream_use_load_balancing_loss: the MoE gates' loss from the last forward pass, scaled
    by hidream_load_balancing_loss_weight instead of the built-in 0.01, with gradients into
    the routers; off (the default), nothing is added."""
    from st_ray.models.family import get_family_module

    family = get_family_module("hidream")
    model = zoo.ensure("hidream", zoo_root)
    gen = torch.Generator().manual_seed(0)
    batch = {
        "pooled_prompt_embeds": torch.randn(2, 64, generator=gen),
        "prompt_embeds_t5": torch.randn(2, 6, 32, generator=gen),
        "prompt_embeds_llama3": torch.randn(2, 2, 6, 32, generator=gen),
    }
    latents = torch.randn(2, 16, 8, 4, generator=gen)  # non-square: padded to max_seq
    losses = {}
    for weight in (None, 0.5):
        options = {
            "hidream_use_load_balancing_loss": True,
            "hidream_load_balancing_loss_weight": weight,
            "gradient_checkpointing": True,
        }
        denoiser = family.load_denoiser(
            str(model), dtype=torch.float32, device=torch.device("cpu"), options=options
        ).train()
        result = family.predict(denoiser, latents, torch.tensor([300.0, 700.0]), batch, options)
        pred, aux = result.output, result.aux_loss
        assert pred.shape == latents.shape
        assert aux is not None and aux.ndim == 0 and aux > 0
        (pred.mean() + aux).backward()
        gates = [p for n, p in denoiser.named_parameters() if n.endswith("gate.weight")]
        assert len(gates) == 2 and all(g.grad is not None and g.grad.abs().max() > 0 for g in gates)
        losses[weight] = aux.item()
    # Same routing, alpha 0.01 -> 0.5: the loss scales by 50.
    assert losses[0.5] == pytest.approx(losses[None] * 50, rel=1e-4)

    off = {"hidream_use_load_balancing_loss": False, "gradient_checkpointing": False}
    denoiser = family.load_denoiser(
        str(model), dtype=torch.float32, device=torch.device("cpu"), options=off
    ).train()
    result = family.predict(denoiser, latents, torch.tensor([300.0, 700.0]), batch, off)
    assert result.aux_loss is None

"""Training the flow-matching DiT families of issue #8 (Sana, Lumina2, AuraFlow) on their tiny
zoo models: a LoRA trains a few steps, renders a validation image through the family's
pipeline and loads back into diffusers; Sana also fully fine-tunes into a loadable
transformer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from st_ray import zoo
from st_ray.data.pipeline import build_caches
from st_ray.plan import build_plan
from st_ray.train.trainer import fit_in_process
from tests.test_training import _write_config

CPU = torch.device("cpu")
PROMPTS = ["A photo of a CAT on a table", "dog"]

FAMILIES = ["sana", "lumina2", "auraflow"]
# One 64 px image, two sampling steps, no CFG: rendered at the end of step 2.
VALIDATION = (
    "--validation_prompt",
    "a red square",
    "--validation_resolution",
    "64",
    "--validation_num_inference_steps",
    "2",
    "--validation_guidance",
    "1.0",
    "--validation_step_interval",
    "2",
    "--disable_benchmark",
    "true",
    "--validation_disable_unconditional",
    "true",
)


@pytest.fixture(scope="module")
def setups(tmp_path_factory, zoo_root, example_dataset, family_cache_root):
    """(model, config) per family, caches built once per module."""
    made: dict[str, tuple[Path, Path]] = {}

    def get(family: str) -> tuple[Path, Path]:
        if family not in made:
            root = tmp_path_factory.mktemp(f"flow-{family}")
            model = zoo.ensure(family, zoo_root)
            config = _write_config(
                root, model, example_dataset.images_dir, family, family_cache_root
            )
            build_caches(build_plan(config, [], {}))
            made[family] = (model, config)
        return made[family]

    return get


def _plan(config: Path, out: Path, *extra: str):
    return build_plan(config, ["--output_dir", str(out), *extra], {})


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_validates_and_loads_in_diffusers(family, setups, tmp_path) -> None:
    import diffusers
    from peft import get_peft_model_state_dict
    from PIL import Image
    from safetensors.torch import load_file

    from st_ray.models import get_family
    from st_ray.train.adapters import WEIGHT_NAME

    model, config = setups(family)
    out = tmp_path / "lora"
    plan = _plan(config, out, "--max_train_steps", "2", *VALIDATION)
    progress, reported = fit_in_process(plan, tmp_path / "ckpt")
    assert progress.global_step == 2 and [r["step"] for r in reported] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in reported)

    (image,) = (out / "validation" / "step-2").glob("*.png")
    assert image.name == "validation-64x64-0.png"
    with Image.open(image) as img:
        assert img.size == (64, 64)

    spec = get_family(family)
    pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(model)
    saved = {
        k.removeprefix(f"{spec.denoiser}."): v for k, v in load_file(out / WEIGHT_NAME).items()
    }
    pipe.load_lora_weights(out)
    assert pipe.get_list_adapters() == {spec.denoiser: ["default_0"]}
    loaded = get_peft_model_state_dict(getattr(pipe, spec.denoiser), adapter_name="default_0")
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in saved.items())


@pytest.mark.usefixtures("ray_local")
def test_sana_full_finetune_saves_a_loadable_transformer(setups, tmp_path) -> None:
    from diffusers import SanaTransformer2DModel

    model, config = setups("sana")
    out = tmp_path / "full"
    plan = _plan(config, out, "--model_type", "full", "--max_train_steps", "2")
    progress, reported = fit_in_process(plan, tmp_path / "ckpt")
    assert progress.global_step == 2 and all(np.isfinite(r["loss"]) for r in reported)
    trained = SanaTransformer2DModel.from_pretrained(out / "transformer")
    base = dict(
        SanaTransformer2DModel.from_pretrained(model, subfolder="transformer").named_parameters()
    )
    assert not any(".lora_" in name for name, _ in trained.named_parameters())
    assert any(not torch.equal(p, base[name]) for name, p in trained.named_parameters())


# ------------------------------------------------------------------- family text options


def _options(**changes):
    from st_ray.config.loader import default_value
    from st_ray.config.options import CANONICAL

    return {name: default_value(o) for name, o in CANONICAL.items()} | changes


def _encode(family: str, path: Path, options: dict) -> dict[str, np.ndarray]:
    from st_ray.models.family import get_family_module

    module = get_family_module(family)
    encoders = module.load_text_encoders(
        str(path), device=CPU, dtype=torch.float32, options=options
    )
    return module.encode_prompts(encoders, PROMPTS, options=options)


def test_sana_complex_human_instruction(zoo_root) -> None:
    from diffusers import SanaPipeline

    path = zoo.ensure("sana", zoo_root)
    with_chi = _encode("sana", path, _options())
    plain = _encode("sana", path, _options(sana_complex_human_instruction=""))
    pipe = SanaPipeline.from_pretrained(path)
    with torch.no_grad():
        embeds, mask, _, _ = pipe.encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, device=CPU, complex_human_instruction=None
        )
    np.testing.assert_allclose(plain["prompt_embeds"], embeds.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(plain["prompt_attention_mask"], mask.numpy())
    # The same caption tokens are kept either way (<bos> + the caption); the instruction
    # changes what Gemma makes of them.
    np.testing.assert_array_equal(with_chi["prompt_attention_mask"], plain["prompt_attention_mask"])
    assert not np.allclose(with_chi["prompt_embeds"], plain["prompt_embeds"], atol=1e-3)
    short = _encode("sana", path, _options(tokenizer_max_length=40))
    assert short["prompt_embeds"].shape == (2, 40, 32)


def test_pretrained_gemma_override_reads_a_plain_gemma(zoo_root, tmp_path) -> None:
    from transformers import AutoTokenizer, Gemma2Model

    sana = zoo.ensure("sana", zoo_root)
    plain = tmp_path / "gemma-2"
    gemma = Gemma2Model.from_pretrained(sana, subfolder="text_encoder")
    with torch.no_grad():
        gemma.embed_tokens.weight.mul_(2.0)
    gemma.save_pretrained(plain)
    AutoTokenizer.from_pretrained(sana, subfolder="tokenizer").save_pretrained(plain)
    for family in ("sana", "lumina2"):
        path = zoo.ensure(family, zoo_root)
        default = _encode(family, path, _options())
        other = _encode(family, path, _options(pretrained_gemma_model_name_or_path=str(plain)))
        np.testing.assert_array_equal(
            other["prompt_attention_mask"], default["prompt_attention_mask"]
        )
        assert not np.allclose(other["prompt_embeds"], default["prompt_embeds"], atol=1e-3)


def test_auraflow_lengths_follow_flavour_and_option(zoo_root) -> None:
    from st_ray.models import auraflow

    assert auraflow.max_length(_options()) == 120
    assert auraflow.max_length(_options(model_flavour="pony")) == 768
    path = zoo.ensure("auraflow", zoo_root)
    got = _encode("auraflow", path, _options(tokenizer_max_length=16))
    assert got["prompt_embeds"].shape == (2, 16, 32)
    padding = got["prompt_attention_mask"] == 0
    assert padding[1].any() and not got["prompt_embeds"][padding].any()  # zeroed padding

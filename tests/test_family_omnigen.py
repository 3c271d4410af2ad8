"""OmniGen (text-to-image): token-id caching, the processor's attention layout, LoRA training
in process with its export loaded back by diffusers, and validation images (these need
torchvision, which OmniGenPipeline requires). A full fine-tune is covered by kolors' test; the
budget for added test time leaves no room for a second one here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from st_ray import zoo
from st_ray.config.errors import ConfigError
from st_ray.data.pipeline import build_caches
from st_ray.models import omnigen
from st_ray.plan import build_plan
from st_ray.train.trainer import fit_in_process
from tests.test_training import _write_config

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
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
def setup(tmp_path_factory, zoo_root, example_dataset, family_cache_root) -> tuple[Path, Path]:
    """(model, config) with the caches built once."""
    root = tmp_path_factory.mktemp("omnigen")
    model = zoo.ensure("omnigen", zoo_root)
    extra = VALIDATION if HAS_TORCHVISION else {"validation_disable": True}
    config = _write_config(
        root,
        model,
        example_dataset.images_dir,
        "omnigen",
        family_cache_root,
        checkpoint_step_interval=None,
        **extra,
    )
    build_caches(build_plan(config, [], {}))
    return model, config


def _train(config: Path, out: Path, ckpt: Path, *extra: str) -> None:
    plan = build_plan(config, ["--output_dir", str(out), "--max_train_steps", "2", *extra], {})
    progress, reported = fit_in_process(plan, ckpt)
    assert progress.global_step == 2 and [r["step"] for r in reported] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in reported)


def _transformer_output(transformer: torch.nn.Module, model: Path) -> torch.Tensor:
    family = omnigen
    encoders = family.load_text_encoders(str(model), device="cpu", dtype=None, options={})
    batch = {
        k: torch.from_numpy(v)
        for k, v in family.encode_prompts(encoders, ["a red square"], options={}).items()
    }
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return family.predict(transformer, latents, torch.tensor([0.5]), batch, {}).output


def test_lora_trains_and_loads_into_the_diffusers_transformer(setup, tmp_path: Path) -> None:
    """diffusers 0.42 has no LoRA loader for OmniGen (neither OmniGenPipeline nor its
    transformer mixes one in): the export loads through diffusers' own load_lora_adapter on
    the transformer class given the PEFT mixin, as for PixArt in tests/test_adapters.py."""
    import diffusers
    from diffusers import OmniGenTransformer2DModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from st_ray.train.adapters import WEIGHT_NAME

    model, config = setup
    out = tmp_path / "lora"
    _train(config, out, tmp_path / "ckpt")
    if HAS_TORCHVISION:
        (png,) = sorted((out / "validation").rglob("*.png"))
        assert png.stat().st_size > 0

    with_peft = type(
        "OmniGenWithPeft", (OmniGenTransformer2DModel, diffusers.loaders.PeftAdapterMixin), {}
    )
    transformer = with_peft.from_pretrained(model, subfolder="transformer").eval()
    base = _transformer_output(transformer, model)
    transformer.load_lora_adapter(out, prefix="transformer", weight_name=WEIGHT_NAME)
    saved = {k.removeprefix("transformer."): v for k, v in load_file(out / WEIGHT_NAME).items()}
    (name,) = transformer.peft_config
    loaded = get_peft_model_state_dict(transformer, adapter_name=name)
    assert set(loaded) == set(saved) and len(saved) == 2 * 8  # A and B of 2 layers x q/k/v/out
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert not torch.allclose(_transformer_output(transformer, model), base)


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed: validation can render")
def test_validation_without_torchvision_is_refused(zoo_root, tmp_path: Path) -> None:
    model = zoo.ensure("omnigen", zoo_root)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "model_family": "omnigen",
                "pretrained_model_name_or_path": str(model),
                "data_backend_config": "d.json",
                "validation_prompt": "a cat",
            }
        )
    )
    with pytest.raises(ConfigError, match="validation_prompt.*torchvision.*validation_disable"):
        build_plan(config, [], {})


def test_a_sampler_without_inverted_sigmas_is_refused(zoo_root, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "model_family": "omnigen",
                "pretrained_model_name_or_path": str(zoo.ensure("omnigen", zoo_root)),
                "data_backend_config": "d.json",
                "validation_noise_scheduler": "unipc",
            }
        )
    )
    with pytest.raises(ConfigError, match="validation_noise_scheduler.*inverted sigmas"):
        build_plan(config, [], {})


def test_attention_inputs_are_the_collators() -> None:
    """Mask and (first-row) positions equal what OmniGenCollator builds for the same rows."""
    from diffusers.pipelines.omnigen.processor_omnigen import OmniGenCollator

    text_mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    mask, positions = omnigen.attention_inputs(text_mask, 6)
    theirs_pos = OmniGenCollator().create_position(text_mask, [6, 6, 6])
    theirs_mask, _ = OmniGenCollator().create_mask(text_mask, [6, 6, 6])
    torch.testing.assert_close(mask, theirs_mask)
    assert positions[0].tolist() == theirs_pos[0].tolist()  # the row diffusers' RoPE reads
    assert positions.shape == theirs_pos.shape


def test_token_cache_is_the_processors_ids_and_refuses_long_prompts(zoo_root) -> None:
    model = zoo.ensure("omnigen", zoo_root)
    encoders = omnigen.load_text_encoders(str(model), device="cpu", dtype=None, options={})
    assert encoders.models == {}  # no text encoder: the transformer embeds the ids
    tokenizer = encoders.tokenizers["tokenizer"]
    prompts = ["a photo of a cat sitting on a wooden table", "dog"]
    arrays = omnigen.encode_prompts(encoders, prompts, options={"tokenizer_max_length": 64})
    assert arrays["input_ids"].shape == arrays["attention_mask"].shape == (2, 64)
    for row, prompt in enumerate(prompts):
        ids = omnigen.token_ids(tokenizer, prompt)
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.convert_ids_to_tokens(ids[-3:]) == [
            "<|end|>",
            "<|assistant|>",
            "<|diffusion|>",
        ]
        assert arrays["input_ids"][row, -len(ids) :].tolist() == ids
        assert arrays["attention_mask"][row].sum() == len(ids)
        assert (arrays["input_ids"][row, : -len(ids)] == omnigen.PAD_ID).all()
    with pytest.raises(ValueError, match="tokenizer_max_length 16"):
        omnigen.encode_prompts(encoders, prompts, options={"tokenizer_max_length": 16})

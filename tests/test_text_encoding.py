"""Text encoding of the family protocol: each family's encode_prompts matches its diffusers
pipeline's encode_prompt on the tiny zoo models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from st_ray import zoo
from st_ray.config.loader import default_value
from st_ray.config.options import CANONICAL
from st_ray.models.family import FAMILIES, get_family, get_family_module

CPU = torch.device("cpu")
PROMPTS = [
    "A photo of a CAT sitting on a wooden table, soft light",
    "  dog  ",  # short: most positions are padding; case and spaces matter to PixArt
]
# Every run option encode_prompts reads, at its default.
OPTIONS = {
    "model_flavour": None,
    "tokenizer_max_length": None,
    "t5_padding": "unmodified",
    "pretrained_t5_model_name_or_path": None,
    "revision": None,
    "variant": None,
    "pretrained_gemma_model_name_or_path": None,
    "sana_complex_human_instruction": default_value(CANONICAL["sana_complex_human_instruction"]),
}
D = 32  # zoo hidden size (parts.HIDDEN); SD3's T5 is 2 * 32 wide


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    """Per family (built and loaded once): zoo path, loaded encoders, default encodings."""
    root = tmp_path_factory.mktemp("te-zoo")
    cache: dict[str, tuple[Path, object, dict[str, np.ndarray]]] = {}

    def get(family: str):
        if family not in cache:
            path = zoo.ensure(family, root)
            module = get_family_module(family)
            encoders = module.load_text_encoders(
                str(path), device=CPU, dtype=torch.float32, options=OPTIONS
            )
            cache[family] = (
                path,
                encoders,
                module.encode_prompts(encoders, PROMPTS, options=OPTIONS),
            )
        return cache[family]

    get.root = root
    return get


def reference(family: str, path: Path) -> dict[str, torch.Tensor]:
    """What the family's own diffusers pipeline encodes for PROMPTS, without CFG."""
    if family == "omnigen":
        return omnigen_reference(path)
    extra = get_family_module(family).validation_components({})  # Cosmos' safety checker
    pipe = getattr(diffusers, get_family(family).pipeline_class).from_pretrained(path, **extra)
    if family in ("sd1x", "sd2x"):
        embeds, _ = pipe.encode_prompt(PROMPTS, CPU, 1, False)
        return {"prompt_embeds": embeds}
    if family == "sdxl":
        embeds, _, pooled, _ = pipe.encode_prompt(
            PROMPTS, device=CPU, do_classifier_free_guidance=False
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    if family == "hidream":
        t5, _, llama, _, pooled, _ = pipe.encode_prompt(
            PROMPTS, device=CPU, do_classifier_free_guidance=False, max_sequence_length=128
        )
        return {
            "prompt_embeds_t5": t5,
            "prompt_embeds_llama3": llama.transpose(0, 1),  # stored batch first
            "pooled_prompt_embeds": pooled,
        }
    if family == "kolors":  # SimpleTuner's 77 ChatGLM tokens (the pipeline defaults to 256)
        embeds, _, pooled, _ = pipe.encode_prompt(
            PROMPTS, device=CPU, do_classifier_free_guidance=False, max_sequence_length=77
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    if family == "flux":
        embeds, pooled, _ = pipe.encode_prompt(PROMPTS, device=CPU, max_sequence_length=512)
        mask = pipe.tokenizer_2(
            PROMPTS, padding="max_length", max_length=512, truncation=True, return_tensors="pt"
        ).attention_mask
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "attention_mask": mask}
    if family == "sd3":
        embeds, _, pooled, _ = pipe.encode_prompt(
            PROMPTS,
            None,
            None,
            device=CPU,
            do_classifier_free_guidance=False,
            max_sequence_length=154,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    if family == "qwen_image":
        # The pipeline pads to the batch's longest prompt; the cache pads every prompt to the
        # fixed 512 with zeros (and mask 0) so any captions stack.
        embeds, mask = pipe.encode_prompt(PROMPTS, device=CPU, max_sequence_length=512)
        assert mask is not None and not mask.all()
        pad = 512 - embeds.shape[1]
        return {
            "prompt_embeds": torch.nn.functional.pad(embeds, (0, 0, 0, pad)),
            "prompt_embeds_mask": torch.nn.functional.pad(mask, (0, pad)),
        }
    if family == "cosmos2image":
        embeds, _ = pipe.encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, device=CPU, max_sequence_length=512
        )
        return {"prompt_embeds": embeds}
    if family == "deepfloyd":
        embeds, _ = pipe.encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, device=CPU, clean_caption=False
        )
        return {"prompt_embeds": embeds}
    if family == "auraflow":
        embeds, *_ = pipe.encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, device=CPU, max_sequence_length=120
        )
        # The pipeline's own mask comes back flattened over the width; ours is the tokenizer's.
        mask = pipe.tokenizer(
            PROMPTS, padding="max_length", max_length=120, truncation=True, return_tensors="pt"
        ).attention_mask
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}
    if family == "lumina2":
        embeds, mask, _, _ = pipe.encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, device=CPU
        )
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}
    if family == "wan":
        # WanPipeline.__call__'s length (encode_prompt alone defaults to 226).
        embeds, _ = pipe.encode_prompt(
            PROMPTS, do_classifier_free_guidance=False, device=CPU, max_sequence_length=512
        )
        return {"prompt_embeds": embeds}
    if family == "sana":
        embeds, mask, _, _ = pipe.encode_prompt(
            PROMPTS,
            do_classifier_free_guidance=False,
            device=CPU,
            complex_human_instruction=OPTIONS["sana_complex_human_instruction"].split("\n"),
        )
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}
    embeds, mask, _, _ = pipe.encode_prompt(
        PROMPTS, do_classifier_free_guidance=False, device=CPU, clean_caption=False
    )
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def omnigen_reference(path: Path) -> dict[str, torch.Tensor]:
    """OmniGen has no encode_prompt: its processor's collator pads the prompts' ids (left,
    with id 2) to the longest; the cache pads them to tokenizer_max_length (256) instead, so
    the collator's rows are compared left-padded further to that width."""
    from diffusers.pipelines.omnigen.processor_omnigen import (
        OmniGenCollator,
        OmniGenMultiModalProcessor,
    )
    from transformers import AutoTokenizer

    # Built without __init__, which needs torchvision only for input-image transforms.
    processor = OmniGenMultiModalProcessor.__new__(OmniGenMultiModalProcessor)
    processor.text_tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
    processor.collator = OmniGenCollator()
    rows = [processor.process_multi_modal_prompt(p, None) for p in PROMPTS]
    ids, mask, _ = processor.collator.pad_input_ids([r["input_ids"] for r in rows], {})
    pad = 256 - ids.shape[1]
    return {
        "input_ids": torch.nn.functional.pad(ids, (pad, 0), value=2),
        "attention_mask": torch.nn.functional.pad(mask, (pad, 0), value=0),
    }


SHAPES = {
    "sd1x": {"prompt_embeds": (2, 77, D)},
    "sd2x": {"prompt_embeds": (2, 77, D)},
    "sdxl": {"prompt_embeds": (2, 77, 2 * D), "pooled_prompt_embeds": (2, D)},
    "flux": {
        "prompt_embeds": (2, 512, D),
        "pooled_prompt_embeds": (2, D),
        "attention_mask": (2, 512),
    },
    "sd3": {"prompt_embeds": (2, 77 + 154, 2 * D), "pooled_prompt_embeds": (2, 2 * D)},
    "pixart_sigma": {"prompt_embeds": (2, 300, D), "prompt_attention_mask": (2, 300)},
    "kolors": {"prompt_embeds": (2, 77, D), "pooled_prompt_embeds": (2, D)},
    "hidream": {
        "pooled_prompt_embeds": (2, 2 * D),
        "prompt_embeds_t5": (2, 128, D),
        "prompt_embeds_llama3": (2, 2, 128, D),  # 2 Llama layers
    },
    "qwen_image": {"prompt_embeds": (2, 512, D), "prompt_embeds_mask": (2, 512)},
    "deepfloyd": {"prompt_embeds": (2, 77, D)},
    "sana": {"prompt_embeds": (2, 300, D), "prompt_attention_mask": (2, 300)},
    "lumina2": {"prompt_embeds": (2, 256, D), "prompt_attention_mask": (2, 256)},
    "auraflow": {"prompt_embeds": (2, 120, D), "prompt_attention_mask": (2, 120)},
    "cosmos2image": {"prompt_embeds": (2, 512, D)},
    "omnigen": {"input_ids": (2, 256), "attention_mask": (2, 256)},
    "wan": {"prompt_embeds": (2, 512, D)},
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_matches_pipeline(models, family: str) -> None:
    path, encoders, got = models(family)
    assert {k: v.shape for k, v in got.items()} == SHAPES[family]
    for key, value in got.items():
        if key.endswith("mask") or key == "input_ids":
            assert value.dtype == np.int64
        else:
            assert value.dtype == np.float32
    # Frozen, eval-mode encoders.
    for model in encoders.models.values():
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        expected = reference(family, path)
    assert set(expected) == set(got)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value.detach().numpy(), atol=1e-5, rtol=0, err_msg=key)
    # Deterministic: encoding again (and one prompt alone) gives the same arrays.
    again = get_family_module(family).encode_prompts(encoders, PROMPTS, options=OPTIONS)
    single = get_family_module(family).encode_prompts(encoders, PROMPTS[:1], options=OPTIONS)
    for key in got:
        np.testing.assert_array_equal(again[key], got[key])
        np.testing.assert_allclose(single[key][0], got[key][0], atol=1e-5, rtol=0)


def test_t5_padding_and_length(models) -> None:
    _, encoders, default = models("flux")
    flux = get_family_module("flux")
    zero = flux.encode_prompts(encoders, PROMPTS, options={**OPTIONS, "t5_padding": "zero"})
    mask = default["attention_mask"].astype(bool)
    assert not mask.all() and mask.any(axis=1).all()
    assert np.abs(default["prompt_embeds"][~mask]).max() > 0  # 'unmodified' keeps padding
    assert not zero["prompt_embeds"][~mask].any()
    np.testing.assert_array_equal(zero["prompt_embeds"][mask], default["prompt_embeds"][mask])
    np.testing.assert_array_equal(zero["pooled_prompt_embeds"], default["pooled_prompt_embeds"])

    schnell = flux.encode_prompts(
        encoders, PROMPTS, options={**OPTIONS, "model_flavour": "schnell"}
    )
    assert schnell["prompt_embeds"].shape == (2, 256, D)
    short = flux.encode_prompts(encoders, PROMPTS, options={**OPTIONS, "tokenizer_max_length": 64})
    assert short["prompt_embeds"].shape == (2, 64, D) and short["attention_mask"].shape == (2, 64)

    _, sd3_encoders, _ = models("sd3")
    sd3 = get_family_module("sd3").encode_prompts(
        sd3_encoders, PROMPTS, options={**OPTIONS, "tokenizer_max_length": 20, "t5_padding": "zero"}
    )
    assert sd3["prompt_embeds"].shape == (2, 77 + 20, 2 * D)
    assert not sd3["prompt_embeds"][1, 77 + 5 :].any()  # "dog</s>" then zeroed padding


def test_sd3_uncond_behaviour_zero_zeroes_empty_captions(models) -> None:
    """sd3_clip_uncond_behaviour / sd3_t5_uncond_behaviour 'zero': an empty caption (caption
    dropout's) encodes as zeros in that encoder's part; other captions are untouched."""
    _, encoders, _ = models("sd3")
    sd3 = get_family_module("sd3")
    prompts = [PROMPTS[0], ""]

    def encode(**extra):
        return sd3.encode_prompts(encoders, prompts, options={**OPTIONS, **extra})

    plain = encode()
    assert np.abs(plain["prompt_embeds"][1]).max() > 0  # "" encodes to something
    both = encode(sd3_clip_uncond_behaviour="zero")  # T5 unset: follows CLIP
    assert not both["prompt_embeds"][1].any() and not both["pooled_prompt_embeds"][1].any()
    np.testing.assert_array_equal(both["prompt_embeds"][0], plain["prompt_embeds"][0])
    np.testing.assert_array_equal(both["pooled_prompt_embeds"][0], plain["pooled_prompt_embeds"][0])
    t5_only = encode(sd3_t5_uncond_behaviour="zero")
    assert not t5_only["prompt_embeds"][1, 77:].any()
    np.testing.assert_array_equal(t5_only["prompt_embeds"][1, :77], plain["prompt_embeds"][1, :77])
    clip_only = encode(sd3_clip_uncond_behaviour="zero", sd3_t5_uncond_behaviour="empty_string")
    assert not clip_only["prompt_embeds"][1, :77].any()
    assert not clip_only["pooled_prompt_embeds"][1].any()
    np.testing.assert_array_equal(
        clip_only["prompt_embeds"][1, 77:], plain["prompt_embeds"][1, 77:]
    )


def test_half_precision_outputs(models) -> None:
    path, _, default = models("pixart_sigma")
    module = get_family_module("pixart_sigma")
    encoders = module.load_text_encoders(
        str(path), device=CPU, dtype=torch.bfloat16, options=OPTIONS
    )
    assert all(m.dtype == torch.bfloat16 for m in encoders.models.values())
    got = module.encode_prompts(encoders, PROMPTS, options=OPTIONS)
    assert got["prompt_embeds"].dtype == np.float32  # numpy has no bfloat16
    np.testing.assert_array_equal(got["prompt_attention_mask"], default["prompt_attention_mask"])


def test_separate_t5_source(models, tmp_path: Path) -> None:
    """pretrained_t5_model_name_or_path: a pipeline folder (same subfolders) or a plain T5."""
    path, _, default = models("flux")
    other = zoo.ensure("flux", models.root, seed=1)
    plain = tmp_path / "t5"
    shutil.copytree(other / "text_encoder_2", plain)
    shutil.copytree(other / "tokenizer_2", plain, dirs_exist_ok=True)
    flux = get_family_module("flux")
    seed1 = None
    for source in (other, plain):
        options = {**OPTIONS, "pretrained_t5_model_name_or_path": str(source)}
        encoders = flux.load_text_encoders(
            str(path), device=CPU, dtype=torch.float32, options=options
        )
        got = flux.encode_prompts(encoders, PROMPTS, options=options)
        np.testing.assert_array_equal(got["pooled_prompt_embeds"], default["pooled_prompt_embeds"])
        assert not np.allclose(got["prompt_embeds"], default["prompt_embeds"])
        if seed1 is not None:
            np.testing.assert_array_equal(got["prompt_embeds"], seed1)
        seed1 = got["prompt_embeds"]


def test_sdxl_without_clip_l(models, tmp_path: Path) -> None:
    """The refiner layout has no text_encoder/tokenizer: condition on text_encoder_2 alone."""
    path, full_encoders, full = models("sdxl")
    refiner = tmp_path / "refiner"
    shutil.copytree(path, refiner)
    for sub in ("text_encoder", "tokenizer"):
        shutil.rmtree(refiner / sub)
    index = json.loads((refiner / "model_index.json").read_text())
    index["text_encoder"] = index["tokenizer"] = [None, None]
    (refiner / "model_index.json").write_text(json.dumps(index))
    sdxl = get_family_module("sdxl")
    encoders = sdxl.load_text_encoders(
        str(refiner), device=CPU, dtype=torch.float32, options=OPTIONS
    )
    assert set(encoders.models) == {"text_encoder_2"}
    got = sdxl.encode_prompts(encoders, PROMPTS, options=OPTIONS)
    assert got["prompt_embeds"].shape == (2, 77, D)
    np.testing.assert_array_equal(got["prompt_embeds"], full["prompt_embeds"][..., D:])
    np.testing.assert_array_equal(got["pooled_prompt_embeds"], full["pooled_prompt_embeds"])


def test_get_family_module() -> None:
    for name, spec in FAMILIES.items():
        module = get_family_module(name)
        assert module.spec is spec
        assert callable(module.load_text_encoders) and callable(module.encode_prompts)
    with pytest.raises(KeyError, match="not available"):
        get_family_module("sd9")

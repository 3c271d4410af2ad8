"""CLIP scores of validation images (evaluation_type clip) with the zoo's tiny CLIP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from st_ray import zoo
from st_ray.train.clip_score import ClipScorer, summarise
from st_ray.train.validation import Validator
from st_ray.zoo import clip as zoo_clip
from tests.test_validation import FAST, _plan


@pytest.fixture(scope="module")
def clip_path(zoo_root: Path) -> Path:
    return zoo.ensure("clip", zoo_root)


def test_zoo_clip_layout_and_matched_prompt_scores_higher(clip_path: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        assert (clip_path / name).is_file(), name
    scorer = ClipScorer(str(clip_path))
    red = zoo_clip.colour_image(zoo_clip.COLOURS["red"], seed=12345)
    blue = zoo_clip.colour_image(zoo_clip.COLOURS["blue"], seed=54321)
    matched = scorer.score([red, blue], ["a red flower", "a blue car"])
    mismatched = scorer.score([red, blue], ["a blue flower", "a red car"])
    assert all(0 <= s <= 100 for s in matched + mismatched)
    assert matched[0] > mismatched[0] and matched[1] > mismatched[1]


def test_summary_per_prompt_and_over_prompts() -> None:
    metrics = summarise({"a": 10.0, "b": 30.0, "ema/a": 20.0})
    assert metrics["clip/a"] == 10.0 and metrics["clip/b"] == 30.0
    assert metrics["clip/mean"] == 20.0 and metrics["clip/min"] == 10.0
    assert metrics["clip/max"] == 30.0 and metrics["clip/std"] == 10.0
    assert metrics["clip/ema/mean"] == 20.0


def test_bad_clip_path_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pretrained_evaluation_model_name_or_path"):
        ClipScorer(str(tmp_path / "missing"))


def test_validator_scores_each_prompt_on_the_eval_schedule(
    zoo_root: Path, clip_path: Path, tmp_path: Path
) -> None:
    from diffusers import UNet2DConditionModel

    model = zoo.ensure("sd1x", zoo_root)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    library = tmp_path / "prompts.json"
    library.write_text('{"sky": "a blue sky"}')
    options = {
        **FAST,
        "user_prompt_library": str(library),
        "validation_step_interval": 100,
        "evaluation_type": "clip",
        "pretrained_evaluation_model_name_or_path": str(clip_path),
        "eval_steps_interval": 3,
    }
    plan = _plan(tmp_path, "sd1x", model, **options)
    validator = Validator(plan, unet, torch.device("cpu"), eval_every=3)
    # CLIP runs on the eval schedule: validations are due there too.
    assert [s for s in range(1, 10) if validator.is_due(s)] == [3, 6, 9]
    validator.run(3)
    scores = validator.metrics[3]
    assert set(scores) == {
        "clip/validation",
        "clip/sky",
        "clip/mean",
        "clip/min",
        "clip/max",
        "clip/std",
    }
    assert scores["clip/mean"] == pytest.approx(
        (scores["clip/validation"] + scores["clip/sky"]) / 2
    )

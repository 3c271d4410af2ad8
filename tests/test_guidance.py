"""Guidance modes of validation renders: SD3 skip-layer guidance, Flux true CFG."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from st_ray import zoo
from st_ray.train.guidance import GuidanceModes, parse_skip_layers
from st_ray.train.validation import Validator, render_with
from st_ray.train.validation_pipeline import build_pipeline
from tests.test_validation import FAST, _plan

CPU = torch.device("cpu")


def _render(validator: Validator, tmp_path: Path, name: str, **modes) -> bytes:
    settings = dataclasses.replace(
        validator.settings, guidance_modes=dataclasses.replace(GuidanceModes(), **modes)
    )
    plan = validator.plan
    (path,) = render_with(
        validator.pipeline, plan.family, settings, device=CPU, step=0, out_dir=tmp_path / name
    )
    return path.read_bytes()


def _validator(tmp_path: Path, family: str, model: Path, denoiser, **options) -> Validator:
    validator = Validator(_plan(tmp_path, family, model, **{**FAST, **options}), denoiser, CPU)
    plan = validator.plan
    validator.pipeline = build_pipeline(
        plan.family.pipeline_class, plan.model, denoiser, plan.family, validator.settings
    )
    return validator


def test_sd3_skip_layer_guidance_changes_the_render(zoo_root: Path, tmp_path: Path) -> None:
    from diffusers import SD3Transformer2DModel

    model = zoo.ensure("sd3", zoo_root)
    transformer = SD3Transformer2DModel.from_pretrained(model, subfolder="transformer")
    # SLG needs CFG (guidance > 1); with 2 steps and start 0 / stop 1 it acts at step 1.
    validator = _validator(tmp_path, "sd3", model, transformer, validation_guidance=4.0)
    plain = _render(validator, tmp_path, "plain")
    skipped = _render(validator, tmp_path, "slg", skip_layers=(0,), skip_start=0.0, skip_stop=1.0)
    assert plain != skipped
    assert _render(validator, tmp_path, "again") == plain


def test_flux_true_cfg_and_its_unguided_first_steps(zoo_root: Path, tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    model = zoo.ensure("flux", zoo_root)
    transformer = FluxTransformer2DModel.from_pretrained(model, subfolder="transformer")
    validator = _validator(tmp_path, "flux", model, transformer)
    plain = _render(validator, tmp_path, "plain")
    real = _render(validator, tmp_path, "real", guidance_real=4.0, no_cfg_until=0)
    assert real != plain
    # Both sampling steps under validation_no_cfg_until_timestep: exactly the unguided image.
    assert _render(validator, tmp_path, "late", guidance_real=4.0, no_cfg_until=2) == plain
    assert _render(validator, tmp_path, "half", guidance_real=4.0, no_cfg_until=1) not in (
        plain,
        real,
    )


def test_guidance_modes_are_refused_where_the_pipeline_lacks_them(
    zoo_root: Path, tmp_path: Path
) -> None:
    model = zoo.ensure("sd1x", zoo_root)
    denoiser = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="validation_guidance_skip_layers: the sd1x pipeline"):
        Validator(
            _plan(tmp_path / "a", "sd1x", model, **FAST, validation_guidance_skip_layers=[1]),
            denoiser,
            CPU,
        )
    with pytest.raises(ValueError, match="validation_guidance_real 3: the sd1x pipeline"):
        Validator(
            _plan(tmp_path / "b", "sd1x", model, **FAST, validation_guidance_real=3.0),
            denoiser,
            CPU,
        )


def test_skip_layers_parse() -> None:
    assert parse_skip_layers("[7, 8]") == (7, 8) and parse_skip_layers([1]) == (1,)
    assert parse_skip_layers(None) is None and parse_skip_layers([]) is None
    for bad in ("[7,", [1.5], "[-1]", {"a": 1}):
        with pytest.raises(ValueError, match="validation_guidance_skip_layers"):
            parse_skip_layers(bad)

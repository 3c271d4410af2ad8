"""Regularisation data (``is_regularisation_data``): the target is the base model's prediction,
i.e. the denoiser's output with its LoRA / LyCORIS adapter switched off, as SimpleTuner does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from st_ray.config.errors import ConfigError
from st_ray.plan import build_plan
from st_ray.train import adapters
from st_ray.train import lycoris_adapter as ly
from st_ray.train.epoch_plan import DatasetSamples
from st_ray.train.regularisation import base_model_target, is_regularisation_batch
from tests.test_lycoris import (
    DEFAULTS,
    LOKR,
    _inputs,
    _options,
    _predict,
    _transformer,
    flux_path,  # noqa: F401 (fixture)
)


def _with_adapter(model, kind: str, tmp_path: Path) -> list[torch.nn.Parameter]:
    """Attach a LoRA or LyCORIS network whose output is not zero; its trainable parameters."""
    if kind == "lora":
        adapters.add_lora(model, "flux", {**DEFAULTS, "lora_rank": 4, "lora_alpha": 4})
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:  # PEFT starts B at zero: the adapter would be a no-op
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    else:
        ly.add_lycoris(model, _options(tmp_path, LOKR, init_lokr_norm=1e-2))
    model.eval()  # the adapter's dropout modules are created in training mode
    return [p for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("kind", ["lora", "lycoris"])
def test_target_is_the_prediction_with_the_adapter_off(kind, flux_path, tmp_path) -> None:  # noqa: F811
    model = _transformer(flux_path)
    latents, batch, _ = _inputs(model)
    base = _predict(model, latents, batch)
    trainable = _with_adapter(model, kind, tmp_path)
    tuned = _predict(model, latents, batch)
    assert trainable and (tuned - base).abs().max() > 1e-3

    target = base_model_target(lambda _gen: _predict(model, latents, batch), model)
    torch.testing.assert_close(target, base.float())
    assert not target.requires_grad
    # The adapter is on again, and still trains.
    torch.testing.assert_close(_predict(model, latents, batch), tuned)
    assert all(p.requires_grad for p in trainable)


def test_no_adapter_is_refused(flux_path) -> None:  # noqa: F811
    model = _transformer(flux_path)
    latents, batch, _ = _inputs(model)
    with pytest.raises(ValueError, match="needs an adapter to switch off"):
        base_model_target(lambda _gen: _predict(model, latents, batch), model)


def test_batches_of_regularisation_datasets_are_recognised() -> None:
    datasets = [DatasetSamples("photos", ()), DatasetSamples("prior", (), is_regularisation=True)]
    assert is_regularisation_batch(datasets, {"dataset_id": "prior"})
    assert not is_regularisation_batch(datasets, {"dataset_id": "photos"})


def test_full_finetune_with_regularisation_data_is_refused(tmp_path, example_dataset) -> None:
    datasets = [
        {
            "id": "prior",
            "type": "local",
            "instance_data_dir": str(example_dataset.images_dir),
            "is_regularization_data": True,  # SimpleTuner's other spelling
        }
    ]
    (tmp_path / "datasets.json").write_text(json.dumps(datasets))
    config = {
        "model_family": "sd1x",
        "model_type": "full",
        "output_dir": str(tmp_path / "out"),
        "data_backend_config": str(tmp_path / "datasets.json"),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="is_regularisation_data: needs model_type 'lora'"):
        build_plan(tmp_path / "config.json", [], {})

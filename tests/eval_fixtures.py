"""A run config with an eval dataset (other images, never trained on), and its caches built
once per test session for the eval-loss and Tune tests (caching dominates their time)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_training import _write_config


def write_eval_config(
    root: Path,
    model: Path,
    images: Path,
    eval_images: Path,
    cache_root: Path | None = None,
    **options,
) -> Path:
    """The training test config plus an eval dataset; caches under ``cache_root`` (default
    ``root``), so configs written elsewhere can share already built caches."""
    config = _write_config(root, model, images, "sd1x", **options)
    datasets_path = Path(json.loads(config.read_text())["data_backend_config"])
    cache = (cache_root or root) / "cache" / "sd1x"
    datasets = json.loads(datasets_path.read_text())
    datasets[0]["cache_dir_vae"] = str(cache / "vae")
    datasets[1]["cache_dir"] = str(cache / "text")
    datasets.insert(
        1,
        {
            "id": "held-out",
            "dataset_type": "eval",
            "type": "local",
            "instance_data_dir": str(eval_images),
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel_area",
            "minimum_image_size": 32,
            "cache_dir_vae": str(cache / "eval-vae"),
        },
    )
    datasets_path.write_text(json.dumps(datasets))
    return config


@dataclass(frozen=True)
class EvalSetup:
    root: Path  # where the caches live
    model: Path
    images: Path
    eval_images: Path
    config: Path


@pytest.fixture(scope="session")
def eval_setup(tmp_path_factory, zoo_root, example_dataset, ray_local) -> EvalSetup:
    from st_ray import example_data, zoo
    from st_ray.data.pipeline import build_caches
    from st_ray.plan import build_plan

    root = tmp_path_factory.mktemp("eval-setup")
    held_out = example_data.generate(root / "held-out-data", seed=11)  # other pixels
    model = zoo.ensure("sd1x", zoo_root)
    config = write_eval_config(
        root, model, example_dataset.images_dir, held_out.images_dir, eval_timesteps=3
    )
    build_caches(build_plan(config, [], {}))
    return EvalSetup(root, model, example_dataset.images_dir, held_out.images_dir, config)

"""A warm re-run of the caches encodes nothing, for every family: the latent reuse check
must know each family's latent geometry (an 8x VAE, Sana's 32x DC-AE, DeepFloyd's pixels)
and the text fingerprint each family's own text options.

The caches are the ones the family tests built (``family_cache_root``, same dataset and
settings); run alone, this test builds each family's once first."""

from __future__ import annotations

from pathlib import Path

import pytest

from st_ray import zoo
from st_ray.data.pipeline import build_caches
from st_ray.plan import build_plan
from tests.test_training import _write_config

pytestmark = pytest.mark.usefixtures("ray_local")


def _cached_config(root: Path, zoo_root: Path, images: Path, family: str, cache_root: Path):
    root.mkdir(parents=True, exist_ok=True)
    config = _write_config(root, zoo.ensure(family, zoo_root), images, family, cache_root)
    if not (cache_root / "cache" / family / "vae").exists():
        build_caches(build_plan(config, [], {}))  # not built by a family test in this session
    return config


def test_every_family_reruns_warm(tmp_path, zoo_root, example_dataset, family_cache_root) -> None:
    cold = []
    for family in zoo.FAMILIES:
        config = _cached_config(
            tmp_path / family, zoo_root, example_dataset.images_dir, family, family_cache_root
        )
        report = build_caches(build_plan(config, [], {}))  # vae_cache_scan_behaviour: recreate
        (dataset,) = report.datasets
        if dataset.encoded or report.captions_encoded or not dataset.reused:
            cold.append(
                f"{family}: {dataset.encoded} images encoded, {dataset.reused} reused, "
                f"{report.captions_encoded} captions encoded"
            )
    assert not cold, "warm re-runs encoded again:\n" + "\n".join(cold)

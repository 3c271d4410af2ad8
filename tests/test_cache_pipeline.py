"""The caching stage end to end on a local Ray instance: latents and text embeddings from the
example dataset, reuse on re-runs, invalidation on a settings change, an interrupted run's
leftovers ignored, and the broken-file summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from st_ray import zoo
from st_ray.config.plan import build_plan
from st_ray.data.cache_store import MANIFEST, CacheMismatch
from st_ray.data.pipeline import build_caches

pytestmark = pytest.mark.usefixtures("ray_local")


def _config(tmp: Path, model: Path, images: Path, **dataset_extra) -> Path:
    datasets = [
        {
            "id": "photos",
            "type": "local",
            "instance_data_dir": str(images),
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel_area",
            "minimum_image_size": 64,
            "cache_dir_vae": str(tmp / "cache" / "vae"),
            **dataset_extra,
        },
        {
            "id": "embeds",
            "dataset_type": "text_embeds",
            "default": True,
            "type": "local",
            "cache_dir": str(tmp / "cache" / "text"),
        },
    ]
    (tmp / "multidatabackend.json").write_text(json.dumps(datasets))
    config = {
        "model_family": "sd1x",
        "pretrained_model_name_or_path": str(model),
        "output_dir": str(tmp / "out"),
        "data_backend_config": str(tmp / "multidatabackend.json"),
        "max_train_steps": 1,
        "vae_batch_size": 4,
        "seed": 1,
    }
    (tmp / "config.json").write_text(json.dumps(config))
    return tmp / "config.json"


def _shards(root: Path) -> list[Path]:
    manifest = json.loads((root / MANIFEST).read_text())
    return [root / shard for shard in manifest["shards"]]


@pytest.fixture(scope="module")
def sd1x(tmp_path_factory) -> Path:
    return zoo.ensure("sd1x", tmp_path_factory.mktemp("zoo"))


def test_cache_build_reuse_and_invalidation(tmp_path: Path, sd1x: Path, example_dataset) -> None:
    config = _config(tmp_path, sd1x, example_dataset.images_dir)
    report = build_caches(build_plan(config, [], {}))
    (photos,) = report.datasets
    # 16 valid images + 3 broken files are seen; one valid image has no caption and one
    # (48x48) is below minimum_image_size 64 (pixel_area compares areas: 100x60 = 6000 px
    # passes the 64x64 = 4096 px minimum).
    assert photos.seen == 19
    assert photos.skipped == {
        "missing_caption": 1,
        "not_an_image": 1,
        "too_small": 1,
        "truncated": 1,
        "zero_bytes": 1,
    }
    assert photos.encoded == 14 and photos.reused == 0

    vae_root = tmp_path / "cache" / "vae"
    rows = [r for s in _shards(vae_root) for r in pq.read_table(s).to_pylist()]
    latents = [r for r in rows if r["status"] == "ok"]
    assert len(latents) == 14
    for row in latents:
        latent = np.frombuffer(row["latent"], dtype=row["latent_dtype"]).reshape(
            row["latent_shape"]
        )
        assert latent.shape == (4, row["bucket_height"] // 8, row["bucket_width"] // 8)
        assert np.isfinite(latent).all() and latent.std() > 0
    manifest = json.loads((vae_root / MANIFEST).read_text())
    assert manifest["summary"]["skipped"]["truncated"] == 1

    # every distinct caption encoded exactly once (the multi-line caption gives 3)
    index = pq.read_table(vae_root / "index.parquet").to_pylist()
    distinct = {c for row in index for c in row["captions"]}
    assert report.captions == len(distinct) and report.captions_encoded == len(distinct)
    text_rows = [
        r for s in _shards(tmp_path / "cache" / "text") for r in pq.read_table(s).to_pylist()
    ]
    assert sorted(r["caption"] for r in text_rows) == sorted(distinct)
    embeds = np.frombuffer(text_rows[0]["prompt_embeds"], dtype=text_rows[0]["prompt_embeds_dtype"])
    assert embeds.reshape(text_rows[0]["prompt_embeds_shape"]).shape == (77, 32)

    # a re-run encodes nothing new
    again = build_caches(build_plan(config, [], {}))
    assert again.datasets[0].encoded == 0 and again.datasets[0].reused == 14
    assert again.captions_encoded == 0 and again.captions_reused == len(distinct)

    # a settings change is refused, naming the difference, unless override_dataset_config
    changed = _config(tmp_path, sd1x, example_dataset.images_dir, resolution=128)
    with pytest.raises(CacheMismatch, match=r"resolution: 64.0 -> 128.0"):
        build_caches(build_plan(changed, [], {}))
    rebuilt = build_caches(build_plan(changed, ["--override_dataset_config"], {}))
    assert rebuilt.datasets[0].reused == 0 and rebuilt.datasets[0].encoded > 0


def test_interrupted_run_leftovers_are_ignored(tmp_path: Path, sd1x: Path, example_dataset) -> None:
    config = _config(tmp_path, sd1x, example_dataset.images_dir)
    build_caches(build_plan(config, [], {}))
    vae_root = tmp_path / "cache" / "vae"
    committed = _shards(vae_root)
    # What a run killed after writing shards but before committing its manifest leaves:
    leftover = vae_root / "shards" / "killed-run" / "part-0.parquet"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(committed[0].read_bytes())
    report = build_caches(build_plan(config, [], {}))
    assert report.datasets[0].reused == 14 and report.datasets[0].encoded == 0
    assert not leftover.exists()
    assert _shards(vae_root)[: len(committed)] == committed


def test_instance_prompt_encodes_one_caption(tmp_path: Path, sd1x: Path, example_dataset) -> None:
    config = _config(
        tmp_path,
        sd1x,
        example_dataset.images_dir,
        caption_strategy="instanceprompt",
        instance_prompt="a photo of sks",
    )
    report = build_caches(build_plan(config, [], {}))
    assert report.datasets[0].encoded == 15  # every image has a caption; only 48x48 drops
    assert report.captions == 1 and report.captions_encoded == 1

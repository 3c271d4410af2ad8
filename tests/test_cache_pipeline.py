"""The caching stage end to end on a local Ray instance: latents and text embeddings from the
example dataset, reuse on re-runs, invalidation on a settings change, an interrupted run's
leftovers ignored, and the broken-file summary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from st_ray import zoo
from st_ray.data.cache_store import MANIFEST, CacheMismatch
from st_ray.data.pipeline import build_caches
from st_ray.plan import build_plan

pytestmark = pytest.mark.usefixtures("ray_local")
REPO = Path(__file__).resolve().parent.parent


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
    index = pq.read_table(vae_root / manifest["index"]).to_pylist()
    distinct = {c for row in index for c in row["captions"]}
    assert report.captions == len(distinct) and report.captions_encoded == len(distinct)
    text_rows = [
        r for s in _shards(tmp_path / "cache" / "text") for r in pq.read_table(s).to_pylist()
    ]
    assert sorted(r["caption"] for r in text_rows) == sorted(distinct | {""})  # + empty caption
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


def test_unchanged_files_are_not_read_again(tmp_path: Path, sd1x: Path, example_dataset) -> None:
    """A re-run trusts the stored listing (size + mtime) and reads no image; a touched file,
    or scan_for_errors, makes it read and hash again."""
    images = tmp_path / "images"
    shutil.copytree(example_dataset.images_dir, images)
    config = _config(tmp_path, sd1x, images)
    cold = build_caches(build_plan(config, [], {})).datasets[0]
    assert cold.encoded == 14
    # Two cached images overwritten with junk of the same size, their mtime put back: a run
    # that read and hashed them would find no image there.
    captioned = [i for i in example_dataset.images if i.caption and min(i.width, i.height) > 48]
    junk = [images / i.relpath for i in captioned[:2]]
    for path in junk:
        info = path.stat()
        path.write_bytes(b"x" * info.st_size)
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))

    warm = build_caches(build_plan(config, [], {})).datasets[0]
    assert (warm.reused, warm.encoded, warm.skipped) == (14, 0, cold.skipped)

    info = junk[0].stat()
    os.utime(junk[0], ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))  # touched
    touched = build_caches(build_plan(config, [], {})).datasets[0]
    assert (touched.reused, touched.encoded) == (13, 0)
    assert touched.skipped["not_an_image"] == cold.skipped["not_an_image"] + 1

    scanned = _config(tmp_path, sd1x, images, scan_for_errors=True)
    forced = build_caches(build_plan(scanned, [], {})).datasets[0]
    assert (forced.reused, forced.encoded) == (12, 0)
    assert forced.skipped["not_an_image"] == cold.skipped["not_an_image"] + 2


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


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_s3_data_and_s3_caches(
    tmp_path: Path, sd1x: Path, example_dataset, s3_server, monkeypatch
) -> None:
    """Images listed and read from a real S3-compatible server; both caches written there."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket()
    s3_server.upload_folder(example_dataset.images_dir, bucket, "data")
    datasets = [
        {
            "id": "s3-photos",
            **s3_server.entry_fields(bucket, "data/"),
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel_area",
            "minimum_image_size": 64,
            "cache_dir_vae": f"s3://{bucket}/cache/vae",
        },
        {
            "id": "embeds",
            "dataset_type": "text_embeds",
            "default": True,
            "type": "aws",
            "aws_bucket_name": bucket,
            "cache_dir": f"s3://{bucket}/cache/text",
        },
    ]
    (tmp_path / "multidatabackend.json").write_text(json.dumps(datasets))
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_family": "sd1x",
                "pretrained_model_name_or_path": str(sd1x),
                "output_dir": str(tmp_path / "out"),
                "data_backend_config": "multidatabackend.json",
                "max_train_steps": 1,
                "s3_endpoint_url": s3_server.endpoint_url,
            }
        )
    )
    plan = build_plan(tmp_path / "config.json", [], {})
    report = build_caches(plan)
    assert report.datasets[0].encoded == 14 and report.datasets[0].skipped["truncated"] == 1
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"cache/vae/{MANIFEST}" in keys and f"cache/text/{MANIFEST}" in keys
    assert any(k.startswith("cache/vae/shards/") and k.endswith(".parquet") for k in keys)
    again = build_caches(plan)
    assert again.datasets[0].reused == 14 and again.captions_encoded == 0
    assert "testing-secret" not in json.dumps(plan.to_dict())


def test_parquet_metadata_captions(tmp_path: Path, sd1x: Path, example_dataset) -> None:
    config = _config(
        tmp_path,
        sd1x,
        example_dataset.images_dir,
        caption_strategy="parquet",
        metadata_backend="parquet",
        parquet={
            "path": str(example_dataset.metadata_parquet),
            "filename_column": "filename",
            "caption_column": "caption",
            "fallback_caption_column": "fallback_caption",
            "identifier_includes_extension": True,
        },
    )
    report = build_caches(build_plan(config, [], {}))
    photos = report.datasets[0]
    # parquet lists only the 16 valid images; the caption-less one uses its fallback caption
    assert photos.seen == 16 and photos.encoded == 15 and photos.skipped == {"too_small": 1}
    vae_root = tmp_path / "cache" / "vae"
    index_name = json.loads((vae_root / MANIFEST).read_text())["index"]
    index = pq.read_table(vae_root / index_name).to_pylist()
    captions = {c for row in index for c in row["captions"]}
    table = pq.read_table(example_dataset.metadata_parquet).to_pylist()
    assert captions <= {r["caption"] for r in table} | {r["fallback_caption"] for r in table}


def test_model_captioning_fills_missing_captions(
    tmp_path: Path, sd1x: Path, example_dataset, tmp_path_factory
) -> None:
    images = tmp_path / "images"
    shutil.copytree(example_dataset.images_dir, images)
    before = _tree(images)
    captioner = zoo.ensure("captioner", tmp_path_factory.mktemp("captioner"))
    config = _config(
        tmp_path, sd1x, images, captioning_model=str(captioner), captioning_max_new_tokens=4
    )
    report = build_caches(build_plan(config, [], {}))
    assert "missing_caption" not in report.datasets[0].skipped
    assert report.datasets[0].encoded == 15
    after = _tree(images)
    added = set(after) - set(before)
    assert len(added) == 1 and next(iter(added)).endswith(".txt")  # one reviewable sidecar
    assert all(after[name] == data for name, data in before.items())  # nothing else touched
    sidecar = images / next(iter(added))
    first = sidecar.read_text()
    assert first.strip()
    again = build_caches(build_plan(config, [], {}))  # not captioned again
    assert sidecar.read_text() == first and again.datasets[0].reused == 15


def test_delete_flags_only_remove_bad_files(tmp_path: Path, sd1x: Path, example_dataset) -> None:
    images = tmp_path / "images"
    shutil.copytree(example_dataset.images_dir, images)
    config = _config(tmp_path, sd1x, images)
    build_caches(build_plan(config, [], {}))
    assert {p.name for p in images.rglob("*")} == {
        p.name for p in example_dataset.images_dir.rglob("*")
    }  # by default nothing in the data is deleted
    build_caches(
        build_plan(config, ["--delete_problematic_images", "--delete_unwanted_images"], {})
    )
    removed = {p.name for p in example_dataset.images_dir.rglob("*")} - {
        p.name for p in images.rglob("*")
    }
    assert removed == {p.name for p in example_dataset.broken_files} | {"tiny_48x48.png"}


def test_killed_cache_job_leaves_a_consistent_cache(
    tmp_path: Path, sd1x: Path, example_dataset
) -> None:
    """SIGKILL a real jobs/cache.py while it writes; the next run sees only committed shards."""
    config = _config(tmp_path, sd1x, example_dataset.images_dir)
    shards = tmp_path / "cache" / "vae" / "shards"
    job = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "cache.py"), "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    running = False
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and job.poll() is None:
            if shards.exists() and any(p.is_file() for p in shards.rglob("*")):
                break
            time.sleep(0.05)
        running = job.poll() is None
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    # The kill landed mid-write: the job was still running, shard files were on disk and no
    # manifest names them yet.
    assert running, "the caching job ended before it could be killed"
    written = [p for p in shards.rglob("*") if p.is_file()]
    manifest = tmp_path / "cache" / "vae" / MANIFEST
    named = set(_shards(tmp_path / "cache" / "vae")) if manifest.exists() else set()
    assert written and not named & set(written), (written, named)
    report = build_caches(build_plan(config, [], {}))
    photos = report.datasets[0]
    assert photos.reused + photos.encoded == 14
    committed = _shards(tmp_path / "cache" / "vae")
    assert set(shards.rglob("*.parquet")) == set(committed)  # leftovers removed
    ok_rows = sum(
        1
        for s in committed
        for r in pq.read_table(s, columns=["status"]).to_pylist()
        if r["status"] == "ok"
    )
    assert ok_rows == 14  # no image cached twice, none missing

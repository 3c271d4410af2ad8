"""Video datasets: clips decoded with PyAV (streaming, resampled to framerate), bad clips
skipped and counted, the video block checked against the family before any work, and a
video family (the tiny Wan) caching and training on the example clips.

Clips are written at run time by st_ray.example_videos (nothing committed or downloaded)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from st_ray import example_videos, zoo
from st_ray.config.errors import ConfigError
from st_ray.data.bucket_settings import BucketSettings
from st_ray.data.video import BadClip, read_clip, resample
from st_ray.data.video_settings import ClipSettings, nearest_frame_counts, valid_frame_count
from st_ray.plan import build_plan

BUCKETS = BucketSettings.create(32, "pixel", alignment=16)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> example_videos.ExampleVideos:
    return example_videos.generate(tmp_path_factory.mktemp("clips"), frames=12, fps=8)


def test_resample_holds_or_drops_frames_to_the_target_rate() -> None:
    times = [i / 8 for i in range(6)]  # 8 fps
    assert list(resample(range(6), lambda i: times[i], None)) == [(i, 1) for i in range(6)]
    # 16 fps: every frame twice (the last lasts as long as the one before it).
    assert list(resample(range(6), lambda i: times[i], 16)) == [
        (0, 2),
        (1, 2),
        (2, 2),
        (3, 2),
        (4, 2),
        (5, 2),
    ]
    # 4 fps: every other frame.
    assert list(resample(range(6), lambda i: times[i], 4)) == [(0, 1), (2, 1), (4, 1)]


def test_frame_count_rule() -> None:
    assert [n for n in range(1, 15) if valid_frame_count(n, 4)] == [1, 5, 9, 13]
    assert [n for n in range(1, 20) if valid_frame_count(n, 8)] == [1, 9, 17]
    assert nearest_frame_counts(10, 4) == (9, 13)
    assert not valid_frame_count(5, 0)  # image families take no clips


@pytest.mark.parametrize("index", range(4))  # mp4, webm, mov, gif
def test_every_container_decodes_into_the_bucket(clips, index: int) -> None:
    frames, plan = read_clip(
        clips.clips[index].read_bytes(), ClipSettings(9, 9), BUCKETS, random.Random(0)
    )
    assert plan.original_size == (64, 48)
    assert frames.shape == (9, plan.bucket[1], plan.bucket[0], 3) and frames.dtype == np.uint8
    # The square moves: the frames differ.
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).max() > 50


def test_framerate_resamples_and_short_or_long_clips_are_refused(clips) -> None:
    data = clips.clips[0].read_bytes()  # 12 frames at 8 fps
    half, _ = read_clip(data, ClipSettings(5, 5, framerate=4), BUCKETS, random.Random(0))
    full, _ = read_clip(data, ClipSettings(9, 9), BUCKETS, random.Random(0))
    np.testing.assert_array_equal(half, full[::2])  # 4 fps keeps every other frame
    doubled, _ = read_clip(data, ClipSettings(9, 9, framerate=16), BUCKETS, random.Random(0))
    np.testing.assert_array_equal(doubled[:8:2], doubled[1:8:2])  # 16 fps shows each twice
    with pytest.raises(BadClip) as short:
        read_clip(data, ClipSettings(13, 13), BUCKETS, random.Random(0))
    assert short.value.reason == "too_short"
    with pytest.raises(BadClip) as long:
        read_clip(data, ClipSettings(5, 5, max_frames=8), BUCKETS, random.Random(0))
    assert long.value.reason == "too_long"
    with pytest.raises(BadClip) as broken:
        read_clip(clips.broken.read_bytes(), ClipSettings(5, 5), BUCKETS, random.Random(0))
    assert broken.value.reason == "not_a_video"
    with pytest.raises(BadClip) as empty:
        read_clip(b"", ClipSettings(5, 5), BUCKETS, random.Random(0))
    assert empty.value.reason == "zero_bytes"


def _config(
    root: Path, family: str, model: str, clip_dir: Path, video: dict | None, **options
) -> Path:
    caches = root / "cache"
    datasets = [
        {
            "id": "clips",
            "type": "local",
            "dataset_type": "video",
            "instance_data_dir": str(clip_dir),
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel_area",
            "cache_dir_vae": str(caches / "vae"),
            **({"video": video} if video is not None else {}),
        },
        {"id": "text", "dataset_type": "text_embeds", "default": True, "type": "local"},
    ]
    (root / "datasets.json").write_text(json.dumps(datasets))
    config = {
        "model_family": family,
        "pretrained_model_name_or_path": model,
        "data_backend_config": str(root / "datasets.json"),
        "output_dir": str(root / "out"),
        "cache_dir_text": str(caches / "text"),
        "train_batch_size": 2,
        "max_train_steps": 2,
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "lora_rank": 4,
        "seed": 3,
        "mixed_precision": "no",
        "tokenizer_max_length": 16,
        "validation_disable": True,
        **options,
    }
    (root / "config.json").write_text(json.dumps(config))
    return root / "config.json"


def _problems(config: Path) -> str:
    with pytest.raises(ConfigError) as err:
        build_plan(config, [], {})
    return str(err.value)


def test_bad_video_config_is_refused_before_work(tmp_path, clips) -> None:
    # A video dataset for an image family.
    image = _problems(_config(tmp_path, "sd1x", "org/model", clips.root, {"num_frames": 5}))
    assert "'video' needs a video model family" in image and "sd1x" in image
    # A frame count the Wan VAE cannot take, shorter-than-num_frames clips, and is_i2v on a
    # text-to-video flavour: all reported at once.
    wan = _problems(
        _config(
            tmp_path,
            "wan",
            "org/model",
            clips.root,
            {"num_frames": 10, "min_frames": 4, "is_i2v": True},
        )
    )
    assert "video.num_frames" in wan and "4k+1" in wan and "use 9 or 13" in wan
    assert "video.min_frames" in wan and "video.is_i2v" in wan


@pytest.mark.usefixtures("ray_local")
def test_wan_caches_the_example_clips_and_trains_a_lora(tmp_path, zoo_root, clips) -> None:
    import diffusers
    from safetensors.torch import load_file

    from st_ray.data.cache_rows import CacheRows
    from st_ray.data.cache_store import CacheStore
    from st_ray.data.pipeline import LATENTS, build_caches
    from st_ray.train.adapters import WEIGHT_NAME
    from st_ray.train.trainer import fit_in_process

    model = zoo.ensure("wan", zoo_root)
    config = _config(tmp_path, "wan", str(model), clips.root, {"num_frames": 5}, framerate=8)
    plan = build_plan(config, [], {})
    report = build_caches(plan)
    (dataset,) = report.datasets
    assert dataset.encoded == 4  # mp4, webm, mov, gif
    assert dataset.skipped == {"not_a_video": 1, "too_short": 1}
    assert "skip:not_a_video" in report.table() and "skip:too_short" in report.table()
    # (16, 5 frames -> 2 latent frames, 64 / 8, 64 / 8): the 64 px bucket of a 64x48 clip.
    store = CacheStore(str(plan.datasets[0]["cache_dir_vae"]), LATENTS)
    rows = CacheRows(store)
    key = rows.index.key_list()[0]
    assert tuple(rows.fetch([key])[key]["latent"].shape) == (16, 2, 8, 8)
    assert build_caches(plan).datasets[0].encoded == 0  # warm: nothing encoded again

    out = tmp_path / "lora"
    validation = {
        "--validation_disable": "false",
        "--validation_prompt": "a red square",
        "--validation_resolution": "64",
        "--validation_num_inference_steps": "1",
        "--validation_num_video_frames": "5",
        "--validation_step_interval": "2",
        "--validation_guidance": "1.0",
        "--validation_disable_unconditional": "true",
        "--disable_benchmark": "true",
    }
    args = ["--output_dir", str(out), *[x for pair in validation.items() for x in pair]]
    progress, reported = fit_in_process(build_plan(config, args, {}), tmp_path / "ckpt")
    assert progress.global_step == 2 and all(np.isfinite(r["loss"]) for r in reported)
    # The validation clip: an mp4 of validation_num_video_frames frames and its gif preview.
    (clip,) = (out / "validation" / "step-2").glob("*.mp4")
    assert clip.with_suffix(".gif").is_file()
    frames, _ = read_clip(clip.read_bytes(), ClipSettings(5, 5), BUCKETS, random.Random(0))
    assert frames.shape == (5, 32, 32, 3)
    saved = load_file(out / WEIGHT_NAME)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in saved.items())
    pipe = diffusers.WanPipeline.from_pretrained(model)
    kwargs = dict(
        prompt="a red square sliding right",
        num_frames=5,
        height=64,
        width=64,
        num_inference_steps=1,
        guidance_scale=1.0,
        max_sequence_length=16,
        output_type="np",
    )
    base = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    pipe.load_lora_weights(out)
    tuned = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    assert base.shape == tuned.shape == (1, 5, 64, 64, 3)
    assert np.abs(base - tuned).max() > 0  # the LoRA changes the rendered frames

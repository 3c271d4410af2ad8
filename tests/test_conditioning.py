"""Conditioning datasets (issue 15) and masked loss (issue 17 item 6): pairing by file name,
pixel alignment through the target's bucket and crop, the links' checks, the cache carrying
the pairs, and 2-step in-process runs whose loss the masks weight."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from st_ray.config.errors import ConfigError
from st_ray.data import conditioning
from st_ray.data.bucket_settings import BucketSettings
from st_ray.data.bucketing import plan_image
from st_ray.data.conditioning_links import conditioning_of
from st_ray.data.prepare import OK, PrepareSettings, prepare_row
from st_ray.train import data_feed, loss_masks
from st_ray.train.losses import LossConfig, compute_loss
from tests.test_config_errors import _base, _run

# --------------------------------------------------------------------------------- pairing


def test_pairs_by_relative_path_and_stem_and_lists_the_unpaired() -> None:
    images = [
        {"image_id": "a/cat.png", "uri": "/d/a/cat.png"},
        {"image_id": "b/cat.png", "uri": "/d/b/cat.png"},
        {"image_id": "dog.jpg", "uri": "/d/dog.jpg"},
    ]
    canny = [
        {"image_id": "a/cat.jpg", "uri": "/c/a/cat.jpg", "stamp": "1"},
        {"image_id": "dog.png", "uri": "/c/dog.png", "stamp": "2"},
    ]
    depth = [{"image_id": "a/cat.webp", "uri": "/e/a/cat.webp", "stamp": "3"}]
    paired, unpaired = conditioning.pair_rows(images, [("canny", canny), ("depth", depth)])
    assert [r["image_id"] for r in paired] == ["a/cat.png"]
    assert json.loads(paired[0][conditioning.URIS]) == ["/c/a/cat.jpg", "/e/a/cat.webp"]
    assert unpaired == {"canny": ["b/cat.png"], "depth": ["b/cat.png", "dog.jpg"]}
    lines = conditioning.unpaired_lines("photos", unpaired)
    assert lines[1].startswith("photos: 2 image(s) without a file of the same name in") and (
        "'depth'" in lines[1] and "b/cat.png, dog.jpg" in lines[1]
    )


def _png(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _noise_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _prepare(target: Path, conds: list[Path], seed: int = 0) -> dict:
    buckets = BucketSettings.create(
        64, "pixel_area", alignment=8, crop=True, crop_style="random", crop_aspect="square"
    )
    settings = PrepareSettings(
        buckets=buckets,
        caption_strategy="instanceprompt",
        entry_fields={"instance_prompt": "x"},
        seed=seed,
        conditioning_s3=tuple(None for _ in conds),
    )
    row = {
        "dataset_id": "photos",
        "image_id": target.name,
        "uri": str(target),
        conditioning.URIS: json.dumps([str(c) for c in conds]),
    }
    return prepare_row(row, settings)


def test_conditioning_goes_through_the_targets_resize_and_random_crop(tmp_path: Path) -> None:
    """A copy of the target as its own conditioning image comes out identical, crop and all;
    the same picture at half size comes out the same up to resampling."""
    target = _png(tmp_path / "img" / "a.png", _noise_image(96, 72, 1).resize((96, 72)))
    smooth = Image.open(target).resize((24, 18)).resize((96, 72), Image.Resampling.BILINEAR)
    _png(target, smooth)
    same = _png(tmp_path / "same" / "a.png", Image.open(target))
    half = _png(tmp_path / "half" / "a.png", Image.open(target).resize((48, 36)))
    row = _prepare(target, [same, half])
    assert row["status"] == OK and row["crop_left"] + row["crop_top"] > 0  # really cropped
    aligned = row[conditioning.PIXELS]
    assert aligned.shape == (2, *row["pixels"].shape)
    np.testing.assert_array_equal(aligned[0], row["pixels"])
    assert np.abs(aligned[1].astype(int) - row["pixels"].astype(int)).mean() < 6
    shifted = np.roll(row["pixels"].astype(int), 4, axis=1)
    assert (
        np.abs(aligned[1].astype(int) - shifted).mean()
        > 3 * np.abs(aligned[1].astype(int) - row["pixels"].astype(int)).mean()
    )
    # The cache key is the pair's: another conditioning file, another key.
    other = _png(tmp_path / "other" / "a.png", _noise_image(96, 72, 2))
    assert _prepare(target, [other])["content_hash"] != _prepare(target, [same])["content_hash"]


def test_a_conditioning_image_of_another_aspect_ratio_is_skipped(tmp_path: Path) -> None:
    target = _png(tmp_path / "img" / "a.png", _noise_image(96, 72, 1))
    square = _png(tmp_path / "cond" / "a.png", _noise_image(64, 64, 3))
    assert _prepare(target, [square])["status"] == conditioning.SIZE_MISMATCH
    broken = tmp_path / "cond" / "b.png"
    broken.write_bytes(b"not an image")
    assert _prepare(target, [broken])["status"] == conditioning.UNREADABLE
    assert plan_image  # the plan the conditioning follows is the target's (bucketing)


# ----------------------------------------------------------------------------- the links


def _linked(tmp_path: Path, **image_fields) -> tuple[dict, list[dict]]:
    config, datasets = _base(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir(exist_ok=True)
    datasets[0].update(image_fields)
    datasets.append(
        {
            "id": "masks",
            "type": "local",
            "dataset_type": "conditioning",
            "conditioning_type": "mask",
            "instance_data_dir": str(masks),
        }
    )
    return config, datasets


def test_conditioning_links_load(tmp_path: Path) -> None:
    from st_ray.plan import build_plan

    config, datasets = _linked(tmp_path, conditioning_data="masks")
    _run(tmp_path, config, datasets)
    plan = build_plan(tmp_path / "config.json", [], {})
    image = next(d for d in plan.datasets if d.id == "images")
    assert [d.id for d in conditioning_of(plan.datasets, image)] == ["masks"]
    assert loss_masks.mask_kinds(plan.datasets) == {"images": "mask"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"conditioning_data": ["nothing"]}, "names 'nothing', which is not an enabled dataset"),
        ({}, "paired with no image dataset"),
        ({"conditioning_data": "masks", "cond_type": "reference_strict"}, "edit-model reference"),
        ({"conditioning_data": "masks", "cond_type": "controlnet", "second": "mask"}, "different"),
        ({"conditioning": [{"type": "canny"}]}, "conditioning generators"),
    ],
)
def test_bad_conditioning_links_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    change = dict(change)
    kind, second = change.pop("cond_type", None), change.pop("second", None)
    config, datasets = _linked(tmp_path, **change)
    if kind:
        datasets[-1]["conditioning_type"] = kind
    if second:
        (tmp_path / "more").mkdir()
        datasets.append(
            {
                "id": "more",
                "dataset_type": "conditioning",
                "conditioning_type": second,
                "source_dataset_id": "images",
                "instance_data_dir": str(tmp_path / "more"),
            }
        )
    with pytest.raises(ConfigError, match=message):
        _run(tmp_path, config, datasets)


# ------------------------------------------------------------------------ batches and masks


def test_collate_picks_one_conditioning_image_per_sample_or_all() -> None:
    from st_ray.train.samples import Sample

    samples = [Sample("d", f"h{i}", (8, 8), ("c",)) for i in range(2)]
    stored = {
        s.content_hash: {
            "latent": torch.zeros(4, 1, 1),
            "conditioning": torch.stack(
                [
                    torch.full((8, 8, 3), 0, dtype=torch.uint8),
                    torch.full((8, 8, 3), 255, dtype=torch.uint8),
                ]
            ),
        }
        for s in samples
    }
    texts = {data_feed.caption_hash("c"): {"e": torch.zeros(2)}}
    args = {"caption_dropout_probability": 0.0, "generator": torch.Generator().manual_seed(0)}
    one = data_feed.collate(samples, stored, texts, **args)
    assert one["conditioning_pixels"].shape == (2, 1, 3, 8, 8)
    assert set(one["conditioning_pixels"].unique().tolist()) <= {-1.0, 1.0}
    both = data_feed.collate(samples, stored, texts, conditioning_sampling="combined", **args)
    assert both["conditioning_pixels"].shape == (2, 2, 3, 8, 8)
    assert both["latents"].shape == (2, 4, 1, 1)


def test_a_half_white_mask_halves_the_loss_of_the_unmasked_half() -> None:
    """Hand-built: a mask white on the top half, black below, area-resized to the latent:
    the loss is the top half's squared error summed over all positions' mean."""
    pred, target = torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4)
    target[:, :, :2] = 1.0  # error 1 on top rows
    target[:, :, 2:] = 3.0  # error 9 on bottom rows
    pixels = -torch.ones(1, 1, 3, 32, 32)
    pixels[..., :16, :] = 1.0
    batch = {"dataset_id": "d", "conditioning_pixels": pixels}
    gen = torch.Generator().manual_seed(0)
    mask = loss_masks.batch_mask({"d": "mask"}, batch, (4, 4), 1.0, gen)
    assert mask.shape == (1, 1, 4, 4) and mask[0, 0, :2].eq(1).all() and mask[0, 0, 2:].eq(0).all()
    config = LossConfig()
    loss = compute_loss(
        config,
        pred,
        target,
        timesteps=torch.ones(1),
        snr=None,
        prediction_type="flow_matching",
        mask=mask,
    )
    assert float(loss) == pytest.approx(0.5)  # (1 * 32 + 9 * 0) / 64
    # Segmentation datasets mask only in a masked_loss_probability share of batches.
    assert loss_masks.batch_mask({"d": "segmentation"}, batch, (4, 4), 0.0, gen) is None
    assert loss_masks.batch_mask({"d": "segmentation"}, batch, (4, 4), 1.0, gen) is not None
    assert loss_masks.batch_mask({}, batch, (4, 4), 1.0, gen) is None


# ------------------------------------------------------- caching and 2-step runs (Ray Data)


def _write_set(root: Path, model: Path, kind: str, name: str) -> Path:
    """A config whose image dataset pairs with a conditioning dataset of ``kind``."""
    datasets = [
        {
            "id": "photos",
            "instance_data_dir": str(root / "photos"),
            "caption_strategy": "instanceprompt",
            "instance_prompt": "a photo",
            "resolution": 64,
            "resolution_type": "pixel_area",
            "minimum_image_size": 32,
            "cache_dir_vae": str(root / "cache" / "vae"),
            "conditioning_data": ["masks"],
        },
        {
            "id": "masks",
            "dataset_type": "conditioning",
            "conditioning_type": kind,
            "instance_data_dir": str(root / "masks"),
        },
        {
            "id": "text",
            "dataset_type": "text_embeds",
            "default": True,
            "cache_dir": str(root / "cache" / "text"),
        },
    ]
    (root / f"{name}-datasets.json").write_text(json.dumps(datasets))
    config = {
        "model_family": "sd1x",
        "pretrained_model_name_or_path": str(model),
        "data_backend_config": str(root / f"{name}-datasets.json"),
        "output_dir": str(root / "out"),
        "train_batch_size": 2,
        "max_train_steps": 2,
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "lora_rank": 4,
        "seed": 3,
        "optimizer": "adamw_bf16",
        "mixed_precision": "no",
    }
    path = root / f"{name}-config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def mask_setup(tmp_path_factory, zoo_root, ray_local):
    """Three photos, black masks for two of them (the third is unpaired), cached once."""
    from st_ray import zoo
    from st_ray.data.pipeline import build_caches
    from st_ray.plan import build_plan

    root = tmp_path_factory.mktemp("conditioning")
    model = zoo.ensure("sd1x", zoo_root)
    for i, name in enumerate(["a", "b", "c"]):
        _png(root / "photos" / f"{name}.png", _noise_image(64, 64, i))
    for name in ["a", "b"]:
        _png(root / "masks" / f"{name}.jpg", Image.new("RGB", (64, 64)))
    config = _write_set(root, model, "mask", "mask")
    report = build_caches(build_plan(config, [], {}))
    return root, model, config, report


def test_pairs_are_cached_and_the_unpaired_image_is_listed(mask_setup) -> None:
    root, _, _, report = mask_setup
    photos = report.datasets[0]
    assert (photos.seen, photos.encoded, photos.skipped) == (3, 2, {conditioning.NO_PAIR: 1})
    assert photos.unpaired == {"masks": ["c.png"]}
    assert "1 image(s) without a file of the same name in conditioning dataset 'masks'" in (
        report.table()
    )
    cache = str(root / "cache" / "vae")
    samples = data_feed.load_dataset_samples(cache, {"id": "photos"}).samples
    rows = data_feed.LatentStore(cache).load(s.content_hash for s in samples)
    assert len(rows) == 2
    for row in rows.values():
        assert row["conditioning"].shape == (1, 64, 64, 3) and int(row["conditioning"].max()) < 8


@pytest.mark.parametrize(
    ("kind", "probability", "masked"),
    [("mask", 1.0, True), ("segmentation", 0.0, False)],
)
def test_black_masks_zero_the_loss(mask_setup, tmp_path, kind, probability, masked) -> None:
    """Black masks leave nothing to train on: loss 0 and no gradient, unless a segmentation
    dataset's masked_loss_probability skips the mask."""
    from st_ray.plan import build_plan
    from st_ray.train.trainer import fit_in_process

    root, model, _, _ = mask_setup
    config = _write_set(root, model, kind, f"{kind}-{probability}")
    extra = ["--masked_loss_probability", str(probability)]
    plan = build_plan(config, ["--output_dir", str(tmp_path / "out"), *extra], {})
    _, reported = fit_in_process(plan, tmp_path / "ckpt")
    assert len(reported) == 2
    if masked:
        assert all(r["loss"] == 0.0 and r["grad_norm"] == 0.0 for r in reported)
    else:
        assert all(r["loss"] > 0 and r["grad_norm"] > 0 for r in reported)


# ---------------------------------------------------------------------- ControlNet (sd1x)


@pytest.mark.parametrize("model_type", ["full", "lora"])
def test_controlnet_trains_and_renders_in_the_diffusers_pipeline(
    mask_setup, tmp_path, model_type
) -> None:
    """2 steps train the ControlNet beside the frozen UNet; controlnet/ loads in
    StableDiffusionControlNetPipeline, and another control image changes the render (the
    zero-initialised output convolutions have moved)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from safetensors.torch import load_file

    from st_ray.plan import build_plan
    from st_ray.train.controlnet import LORA_FILE, SUBFOLDER
    from st_ray.train.trainer import fit_in_process

    root, model, _, _ = mask_setup
    config = _write_set(root, model, "controlnet", "controlnet")  # the same cache: same pairs
    out = tmp_path / "out"
    args = ["--output_dir", str(out), "--controlnet", "--model_type", model_type]
    plan = build_plan(config, [*args, "--validation_disable"], {})
    _, reported = fit_in_process(plan, tmp_path / "ckpt")
    assert len(reported) == 2 and all(r["loss"] > 0 and r["grad_norm"] > 0 for r in reported)
    if model_type == "lora":
        assert any(
            "lora_B" in k and v.abs().max() > 0 for k, v in load_file(out / LORA_FILE).items()
        )
    controlnet = ControlNetModel.from_pretrained(out / SUBFOLDER)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        model, controlnet=controlnet, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)

    def render(value: int) -> np.ndarray:
        return pipe(
            "a photo",
            image=Image.new("RGB", (64, 64), (value,) * 3),
            num_inference_steps=2,
            height=64,
            width=64,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images[0]

    assert np.abs(render(0) - render(255)).max() > 0


def test_controlnet_is_refused_where_it_cannot_apply(mask_setup, tmp_path) -> None:
    from st_ray.plan import build_plan

    root, model, mask_config, _ = mask_setup
    out = ["--output_dir", str(tmp_path)]
    with pytest.raises(ConfigError, match="needs a control image for every sample"):
        build_plan(mask_config, [*out, "--controlnet"], {})
    controls = _write_set(root, model, "controlnet", "controlnet-off")
    with pytest.raises(ConfigError, match="which only ControlNet training reads"):
        build_plan(controls, out, {})
    with pytest.raises(ConfigError, match="has no ControlNet in st_ray"):
        build_plan(controls, [*out, "--controlnet", "--model_family", "pixart_sigma"], {})

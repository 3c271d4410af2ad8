"""Decoding (broken inputs, EXIF orientation, colour modes) and plan application."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from st_ray.data.bucket_settings import BucketSettings
from st_ray.data.bucketing import ImagePlan, plan_image
from st_ray.data.transforms import BadImage, apply_plan, load_image


def _encode(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def _reason(data: bytes) -> str:
    with pytest.raises(BadImage) as err:
        load_image(data)
    return err.value.reason


def test_example_broken_files_are_classified(example_dataset):
    by_name = {path.name: _reason(path.read_bytes()) for path in example_dataset.broken_files}
    assert by_name == {
        "broken_truncated.jpg": "truncated",
        "broken_empty.png": "zero_bytes",
        "broken_not_an_image.jpg": "not_an_image",
    }


def test_truncated_png_and_cut_headers():
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    png = _encode(Image.fromarray(noise), "PNG")
    assert _reason(png[: len(png) // 2]) == "truncated"  # pixel data cut
    assert _reason(png[:20]) == "truncated"  # PNG signature, header cut
    jpeg = _encode(Image.fromarray(noise), "JPEG")
    assert _reason(jpeg[:100]) == "truncated"
    assert _reason(b"\x00\x01 definitely not an image") == "not_an_image"
    assert _reason(b"") == "zero_bytes"


def test_example_images_decode_to_rgb_and_fit_their_buckets(example_dataset):
    # Small resolution keeps this fast; every valid image, including the grayscale and RGBA
    # ones, comes out as exactly bucket-shaped uint8 RGB.
    settings = [
        BucketSettings.create(256, "pixel_area", minimum_image_size=64),
        BucketSettings.create(256, "pixel", crop=True, crop_aspect="square"),
        BucketSettings.create(
            256, "pixel", crop=True, crop_aspect="random", crop_aspect_buckets=[0.5, 1.0, 1.5]
        ),
    ]
    shapes = set()
    for image_info in example_dataset.images:
        image = load_image(image_info.path.read_bytes())
        assert image.mode == "RGB"
        assert image.size == (image_info.width, image_info.height)
        for index, setting in enumerate(settings):
            plan = plan_image(*image.size, setting, random.Random(index))
            if not plan.ok:
                assert plan.skip_reason == "too_small" and image_info.width == 48
                continue
            pixels = apply_plan(image, plan)
            assert pixels.dtype == np.uint8
            assert pixels.shape == (plan.bucket[1], plan.bucket[0], 3)
            assert pixels.flags.writeable
            shapes.add(pixels.shape)
    assert len(shapes) > 5


def test_exif_orientation_is_applied():
    # Stored 40x20: left half red, right half blue. Orientation 6 means "rotate 90 degrees
    # clockwise to display": upright it is 20x40 with red on top and blue below.
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_image(_encode(stored, "JPEG", exif=exif, quality=95))
    assert image.size == (20, 40)
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


def test_modes_are_converted_to_rgb():
    grey = load_image(_encode(Image.new("L", (8, 8), 100), "PNG"))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (100, 100, 100)
    # Alpha is dropped as SimpleTuner does (convert, no compositing): colour values are kept.
    rgba = load_image(_encode(Image.new("RGBA", (8, 8), (10, 20, 30, 0)), "PNG"))
    assert rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (10, 20, 30)


def test_apply_plan_crops_the_planned_region():
    # 576x512, columns 0-31 red, the rest green. Square 512 crop: resize_to is the image
    # itself (scale max(512/576, 512/512) = 1), slack 64 px wide.
    image = Image.new("RGB", (576, 512), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, 32, 512))
    options = dict(crop=True, crop_aspect="square")
    corner = BucketSettings.create(512, "pixel", crop_style="corner", **options)
    center = BucketSettings.create(512, "pixel", crop_style="center", **options)
    corner_plan = plan_image(576, 512, corner, random.Random(0))
    center_plan = plan_image(576, 512, center, random.Random(0))
    assert corner_plan.resize_to == (576, 512) and corner_plan.crop == (0, 0)
    assert center_plan.crop == (32, 0)  # 64 // 2
    assert tuple(apply_plan(image, corner_plan)[0, 0]) == (255, 0, 0)
    assert tuple(apply_plan(image, center_plan)[0, 0]) == (0, 255, 0)


def test_apply_plan_downsamples_huge_images():
    image = Image.new("RGB", (3000, 2000), (40, 80, 120))
    settings = BucketSettings.create(
        1024,
        crop=True,
        crop_aspect="preserve",
        maximum_image_size=1536,
        target_downsample_size=1280,
    )
    plan = plan_image(3000, 2000, settings, random.Random(0))
    pixels = apply_plan(image, plan)
    assert pixels.shape == (832, 1280, 3)
    assert np.abs(pixels.astype(int) - (40, 80, 120)).max() <= 1


def test_apply_plan_refuses_mismatches():
    image = Image.new("RGB", (100, 100))
    with pytest.raises(ValueError, match="skipped"):
        apply_plan(image, ImagePlan((100, 100), skip_reason="too_small"))
    plan = plan_image(200, 100, BucketSettings.create(64, "pixel"), random.Random(0))
    with pytest.raises(ValueError, match="plan is for"):
        apply_plan(image, plan)

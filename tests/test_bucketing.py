"""Aspect bucketing math, checked against hand-computed SimpleTuner results.

Every expected value is worked out in the comments. Shorthands: "r64(x)" rounds x to the
nearest multiple of 64 with Python's round (halves to even); "ar" is width/height rounded to
2 decimals (aspect_bucket_rounding 2); sqrt(1.46) = 1.208305, sqrt(1.5) = 1.224745.
"""

from __future__ import annotations

import random

import pytest

from st_ray.config.datasets import DatasetEntry
from st_ray.data.bucket_counts import (
    bucket_repeats,
    count_buckets,
    effective_repeats,
    prune_buckets,
)
from st_ray.data.bucket_settings import BucketSettings, check_alignment, round_to_multiple
from st_ray.data.bucketing import ImagePlan, aspect_in_range, plan_image


def plan(width: int, height: int, seed: int = 0, **options) -> ImagePlan:
    resolution = options.pop("resolution", 1024)
    resolution_type = options.pop("resolution_type", "pixel_area")
    settings = BucketSettings.create(resolution, resolution_type, **options)
    return plan_image(width, height, settings, random.Random(seed))


# --- resolution types ------------------------------------------------------------------------


def test_pixel_1216x832_no_crop():
    # ar = round(1216/832 = 1.4615, 2) = 1.46; landscape, so the height gets 1024 and the
    # width floor(1024 * 1.46 = 1495.04) = 1495 -> r64: 1495/64 = 23.36 -> 23*64 = 1472.
    # Resize to cover 1472x1024 keeping 1216x832's aspect: scale = max(1472/1216 = 1.2105,
    # 1024/832 = 1.2308) = 1.2308 -> floor(1216 * 1.2308 = 1496.6) = 1496 x 1024.
    # crop false still trims the 1496 - 1472 = 24 alignment pixels; center: left 24 // 2 = 12.
    p = plan(1216, 832, resolution=1024, resolution_type="pixel", crop_style="center")
    assert p.ok
    assert p.bucket == (1472, 1024)
    assert p.resize_to == (1496, 1024)
    assert p.crop == (12, 0)
    assert p.aspect == 1.44  # round(1472/1024 = 1.4375, 2)
    assert p.crop_box == (12, 0, 1484, 1024)


def test_pixel_portrait_gives_the_width_the_resolution():
    # ar = round(832/1216 = 0.6842, 2) = 0.68; portrait (w < h): width 1024, height
    # floor(1024 / 0.68 = 1505.88) = 1505 -> 1505/64 = 23.52 -> 24*64 = 1536.
    # scale = max(1024/832 = 1.2308, 1536/1216 = 1.2632) -> floor(832 * 1.2632 = 1050.9) = 1050.
    p = plan(832, 1216, resolution=1024, resolution_type="pixel", crop_style="corner")
    assert (p.bucket, p.resize_to, p.crop) == ((1024, 1536), (1050, 1536), (0, 0))


def test_pixel_area_1024():
    # pixel_area 1024 -> 1024*1024 / 1e6 = 1.048576 MP -> 1048576 px; edge int(sqrt) = 1024.
    # width r64(1024 * 1.208305 = 1237.30) -> 19.33 -> 1216; height r64(1024 / 1.208305 =
    # 847.47) -> 13.24 -> 832. The image already has the bucket size: no resize, no crop.
    p = plan(1216, 832, resolution=1024, resolution_type="pixel_area")
    assert (p.bucket, p.resize_to, p.crop, p.aspect) == ((1216, 832), (1216, 832), (0, 0), 1.46)


def test_area_one_megapixel_is_1e6_pixels():
    # area 1.0 -> 1e6 px (SimpleTuner: megapixels * 1e6); edge int(sqrt(1e6)) = 1000 ->
    # 1000/64 = 15.625 -> 16 -> 1024: at alignment 64 the same bucket as pixel_area 1024.
    assert plan(1216, 832, resolution=1.0, resolution_type="area").bucket == (1216, 832)


def test_alignment_64_vs_16():
    # pixel_area 1024, alignment 16: edge 1024; 1237.30/16 = 77.33 -> 77*16 = 1232;
    # 847.47/16 = 52.97 -> 53*16 = 848. Resize: scale = max(1232/1216, 848/832 = 1.01923)
    # -> floor(1216 * 1.01923 = 1239.4) = 1239 x 848; center left (1239 - 1232) // 2 = 3.
    p = plan(1216, 832, alignment=16, crop_style="center")
    assert (p.bucket, p.resize_to, p.crop) == ((1232, 848), (1239, 848), (3, 0))
    # area 1.0, alignment 16: the 1e6 vs 1024**2 difference shows. 1000/16 = 62.5 -> round to
    # even 62 -> edge 992; 992 * 1.208305 = 1198.64 -> 74.9 -> 75*16 = 1200;
    # 992 / 1.208305 = 820.99 -> 51.3 -> 51*16 = 816. Resize: scale = max(1200/1216 =
    # 0.98684, 816/832 = 0.98077) -> 1200 x floor(832 * 0.98684 = 821.05) = 821.
    p = plan(1216, 832, resolution=1.0, resolution_type="area", alignment=16)
    assert (p.bucket, p.resize_to) == ((1200, 816), (1200, 821))


def test_round_to_multiple_is_pythons_round():
    assert round_to_multiple(1000, 16) == 992  # 62.5 -> 62 (half to even)
    assert round_to_multiple(1000, 64) == 1024  # 15.625 -> 16
    assert round_to_multiple(10, 64) == 64  # never below one multiple


def test_square_bucket_uses_the_remapped_edge():
    # area 1.0, alignment 16, an 800x800 image: ar 1.0, edge 992 gives 992x992, whose aspect
    # is 1.0, so the bucket becomes the square bucket: SimpleTuner remaps 1.0 MP to 1024**2
    # for it, sqrt = 1024 -> 1024x1024; the 800x800 image is resized straight to it.
    p = plan(800, 800, resolution=1.0, resolution_type="area", alignment=16)
    assert (p.bucket, p.resize_to, p.crop) == ((1024, 1024), (1024, 1024), (0, 0))


# --- cropping --------------------------------------------------------------------------------


def test_square_crop_512_of_640x480_center_and_corner():
    # bucket 512x512; resize: scale = max(512/640 = 0.8, 512/480 = 1.0667) ->
    # floor(640 * 1.0667 = 682.67) = 682 x 512. center: left (682 - 512) // 2 = 85.
    options = dict(resolution=512, resolution_type="pixel", crop=True, crop_aspect="square")
    center = plan(640, 480, crop_style="center", **options)
    assert (center.bucket, center.resize_to, center.crop) == ((512, 512), (682, 512), (85, 0))
    assert center.aspect == 1.0
    corner = plan(640, 480, crop_style="corner", **options)
    assert (corner.bucket, corner.resize_to, corner.crop) == ((512, 512), (682, 512), (0, 0))
    centre = plan(640, 480, crop_style="centre", **options)  # SimpleTuner's alias
    assert centre.crop == (85, 0)


def test_random_crop_is_reproducible_and_in_bounds():
    options = dict(resolution=512, resolution_type="pixel", crop=True, crop_style="random")
    first = plan(640, 480, seed=7, **options)
    assert first == plan(640, 480, seed=7, **options)
    lefts = set()
    for seed in range(40):
        p = plan(640, 480, seed=seed, **options)
        left, top = p.crop
        assert 0 <= left <= 682 - 512 and top == 0  # slack 170 px wide, none in height
        lefts.add(left)
    assert len(lefts) > 10


def test_crop_aspect_preserve_keeps_the_image_aspect():
    # preserve = the image's own aspect: the same bucket as without cropping (1472x1024).
    p = plan(
        1216,
        832,
        resolution=1024,
        resolution_type="pixel",
        crop=True,
        crop_aspect="preserve",
        crop_style="center",
    )
    assert (p.bucket, p.resize_to, p.crop) == ((1472, 1024), (1496, 1024), (12, 0))


def test_crop_aspect_closest():
    # ar 1.46; distances to [1.0, 1.5, 0.67] are 0.46, 0.04, 0.79 -> 1.5. Landscape: height
    # 1024, width floor(1024 * 1.5) = 1536 (= 24*64). Resize: scale = max(1536/1216 = 1.26316,
    # 1024/832 = 1.23077) -> 1536 x floor(832 * 1.26316 = 1050.95) = 1050; center top 13.
    p = plan(
        1216,
        832,
        resolution=1024,
        resolution_type="pixel",
        crop=True,
        crop_aspect="closest",
        crop_aspect_buckets=[1.0, 1.5, 0.67],
        crop_style="center",
    )
    assert (p.bucket, p.resize_to, p.crop, p.aspect) == ((1536, 1024), (1536, 1050), (0, 13), 1.5)


def test_crop_aspect_random_weighted_and_validated():
    weighted = [{"aspect": 1.0, "weight": 1.0}, {"aspect": 2.0, "weight": 0.0}]
    for seed in range(10):
        p = plan(
            1000, 1000, seed=seed, crop=True, crop_aspect="random", crop_aspect_buckets=weighted
        )
        assert p.bucket == (1024, 1024)
    with pytest.raises(ValueError, match="add up to 1"):
        BucketSettings.create(
            1024,
            crop=True,
            crop_aspect="random",
            crop_aspect_buckets=[{"aspect": 1.0, "weight": 0.4}],
        )
    with pytest.raises(ValueError, match="crop_aspect_buckets"):
        BucketSettings.create(1024, crop=True, crop_aspect="closest")
    with pytest.raises(NotImplementedError, match="face"):
        BucketSettings.create(1024, crop=True, crop_style="face")


# --- size limits -----------------------------------------------------------------------------


def test_minimum_image_size():
    # pixel: 48 < 64 on both sides.
    assert plan(48, 48, resolution_type="pixel", minimum_image_size=64).skip_reason == "too_small"
    # pixel_area: 64 -> 64*64 = 4096 px of area; 48*48 = 2304 < 4096, 64*64 = 4096 is enough.
    assert plan(48, 48, minimum_image_size=64).skip_reason == "too_small"
    assert plan(64, 64, minimum_image_size=64).ok
    assert plan(128, 32, minimum_image_size=64).ok  # 4096 px, thin but large enough
    # area with a square crop also needs both sides >= floor(sqrt(0.25e6)) = 500.
    area = dict(resolution=1.0, resolution_type="area", minimum_image_size=0.25)
    assert plan(1000, 300, **area).ok  # 300000 >= 250000
    assert plan(1000, 300, crop=True, crop_aspect="square", **area).skip_reason == "too_small"


def test_max_upscale_threshold_allows_a_small_upscale():
    # 900x900 to the 1024x1024 bucket: 1024 <= 900 * 1.2 = 1080, so 0.2 allows it ...
    options = dict(
        resolution=1024,
        resolution_type="pixel",
        crop=True,
        crop_aspect="closest",
        crop_aspect_buckets=[1.0],
    )
    p = plan(900, 900, max_upscale_threshold=0.2, **options)
    assert (p.bucket, p.resize_to) == ((1024, 1024), (1024, 1024))
    # ... 0.1 does not (900 * 1.1 = 990 < 1024): no bucket left, the image is too small.
    assert plan(900, 900, max_upscale_threshold=0.1, **options).skip_reason == "too_small"


def test_max_upscale_threshold_filters_random_buckets():
    # 900x900 (landscape rule, w >= h): 1.0 -> 1024x1024 fits 1080; 0.5 -> width
    # floor(1024 * 0.5) = 512, height 1024: fits; 2.0 -> 2048x1024: 2048 > 1080, excluded.
    options = dict(
        resolution=1024,
        resolution_type="pixel",
        crop=True,
        crop_aspect="random",
        crop_aspect_buckets=[1.0, 0.5, 2.0],
    )
    limited = {
        plan(900, 900, seed=s, max_upscale_threshold=0.2, **options).bucket for s in range(40)
    }
    assert limited == {(1024, 1024), (512, 1024)}
    free = {plan(900, 900, seed=s, **options).bucket for s in range(40)}
    assert free == {(1024, 1024), (512, 1024), (2048, 1024)}
    # 800x800: the limit is 960 and every bucket needs 1024 somewhere.
    p = plan(800, 800, max_upscale_threshold=0.2, **options)
    assert p.skip_reason == "too_small"


def test_maximum_image_size_downsamples_before_cropping():
    # 3000x2000, pixel_area 1024, ar 1.5: width r64(1024 * 1.224745 = 1254.1) -> 19.6 -> 1280,
    # height r64(1024 / 1.224745 = 836.1) -> 13.06 -> 832: bucket 1280x832.
    options = dict(crop=True, crop_aspect="preserve", crop_style="center")
    plain = plan(3000, 2000, **options)
    # Without limits: scale = max(1280/3000 = 0.42667, 832/2000 = 0.416) -> 1280 x
    # floor(2000 * 0.42667 = 853.3) = 853; center top (853 - 832) // 2 = 10.
    assert (plain.bucket, plain.resize_to, plain.crop) == ((1280, 832), (1280, 853), (0, 10))
    # maximum 1536 -> 1536**2 = 2359296 px < 3000*2000 = 6e6: oversized. target 1280 ->
    # 1280**2 px, edge 1280: width r64(1280 * 1.224745 = 1567.7) -> 24.49 -> 1536, height
    # r64(1280 / 1.224745 = 1045.1) -> 16.33 -> 1024; 1536x1024 is exactly 3000x2000 scaled by
    # 0.512. The crop then keeps more scene: left (1536 - 1280) // 2 = 128, top (1024-832)//2 = 96.
    limited = plan(3000, 2000, maximum_image_size=1536, target_downsample_size=1280, **options)
    assert (limited.bucket, limited.resize_to, limited.crop) == (
        (1280, 832),
        (1536, 1024),
        (128, 96),
    )
    # 1216x832 = 1011712 px is below the maximum: untouched by the limit.
    small = plan(1216, 832, maximum_image_size=1536, target_downsample_size=1280, **options)
    assert small.resize_to == (1216, 832)
    # Without crop the whole image is resized to the bucket anyway: the limit does not apply.
    no_crop = plan(
        3000, 2000, maximum_image_size=1536, target_downsample_size=1280, crop_style="center"
    )
    assert no_crop.resize_to == (1280, 853)
    with pytest.raises(ValueError, match="target_downsample_size"):
        BucketSettings.create(1024, maximum_image_size=1536)


def test_maximum_image_size_in_pixel_mode():
    # pixel 1024, ar 1.5: bucket 1536x1024 (floor(1024 * 1.5) = 1536). 3000 > 2048 ->
    # oversized; target 1536: height 1536, width 2304 -> resize 2304x1536; center crop
    # left (2304 - 1536) // 2 = 384, top (1536 - 1024) // 2 = 256.
    p = plan(
        3000,
        2000,
        resolution=1024,
        resolution_type="pixel",
        crop=True,
        crop_aspect="preserve",
        crop_style="center",
        maximum_image_size=2048,
        target_downsample_size=1536,
    )
    assert (p.bucket, p.resize_to, p.crop) == ((1536, 1024), (2304, 1536), (384, 256))


def test_pixel_area_limits_are_converted_like_the_resolution():
    s = BucketSettings.create(
        1024,
        "pixel_area",
        minimum_image_size=512,
        maximum_image_size=2048,
        target_downsample_size=1536,
    )
    assert s.resolution_type == "area"
    assert s.resolution == pytest.approx(1.048576)
    assert s.minimum_image_size == pytest.approx(0.262144)  # 512**2 / 1e6
    assert s.maximum_image_size == pytest.approx(4.194304)  # 2048**2 / 1e6
    assert s.target_downsample_size == pytest.approx(2.359296)  # 1536**2 / 1e6


def test_aspect_in_range():
    assert aspect_in_range(1.46, 0.5, 3.0)
    assert not aspect_in_range(0.4, 0.5, None)
    assert not aspect_in_range(3.5, None, 3.0)
    assert aspect_in_range(9.0, 0, None)  # 0 = no limit


# --- settings from a dataset entry and alignment ---------------------------------------------


def test_from_entry_and_check_alignment():
    fields = {
        "resolution": 512.0,
        "resolution_type": "pixel",
        "crop": True,
        "crop_aspect": "square",
        "crop_style": "center",
        "minimum_image_size": 64.0,
    }
    entry = DatasetEntry("pics", "image", "local", fields, 0)
    settings = BucketSettings.from_entry(entry, 16, alignment=32)
    assert (settings.resolution, settings.alignment, settings.rounding) == (512.0, 32, 2)
    assert plan_image(640, 480, settings, random.Random(0)).crop == (85, 0)
    with pytest.raises(ValueError) as err:
        BucketSettings.from_entry(entry, 16, alignment=24, family="flux")
    message = str(err.value)
    assert "aspect_bucket_alignment 24 is not a multiple of 16" in message
    assert "'flux'" in message
    check_alignment(64, 16, "flux")
    check_alignment(8, 8, "sd1x")
    with pytest.raises(ValueError, match="multiple of 16"):
        check_alignment(8, 16, "sd3")


# --- dataset level ---------------------------------------------------------------------------


def test_prune_buckets():
    counts = {(1024, 1024): 10, (1216, 832): 3, (832, 1216): 1}
    # batch 2 on 2 ranks needs 4 images per bucket.
    kept, dropped = prune_buckets(counts, batch_size=2, world_size=2, disable_pruning=False)
    assert kept == {(1024, 1024): 10}
    assert dropped == {(1216, 832): 3, (832, 1216): 1}
    # repeats 1 doubles every bucket: 3*2 = 6 >= 4 stays, 1*2 = 2 < 4 still goes.
    kept, dropped = prune_buckets(counts, 2, 2, False, repeats=1)
    assert set(kept) == {(1024, 1024), (1216, 832)} and dropped == {(832, 1216): 1}
    kept, dropped = prune_buckets(counts, 2, 2, disable_pruning=True)
    assert kept == counts and dropped == {}


def test_effective_repeats():
    # SimpleTuner's example: 25 images, 8 GPUs, batch 4 -> effective 32 > 25;
    # oversubscription sets repeats = ceil(32 / 25) - 1 = 1 (25 x 2 = 50 samples).
    assert effective_repeats(25, 0, 4, 8, 1, True) == 1
    # Enough already: 25 x (2 + 1) = 75 >= 32, repeats stay as set.
    assert effective_repeats(25, 2, 4, 8, 1, True) == 2
    assert effective_repeats(100, 0, 4, 8, 1, False) == 0
    # Gradient accumulation counts: 4 x 2 x 3 = 24 -> ceil(24 / 5) - 1 = 4.
    assert effective_repeats(5, 0, 4, 2, 3, True) == 4
    with pytest.raises(ValueError) as err:
        effective_repeats(25, 0, 4, 8, 1, False)
    message = str(err.value)
    assert "4 x 8 GPU(s) x gradient_accumulation_steps 1 = 32" in message
    assert "repeats >= 1" in message and "allow_dataset_oversubscription" in message
    # Repeats set by hand are never overridden: 10 x 2 = 20 < 32 is an error.
    with pytest.raises(ValueError, match="never overrides"):
        effective_repeats(10, 1, 4, 8, 1, True)
    with pytest.raises(ValueError, match="no usable images"):
        effective_repeats(0, 0, 1, 1, 1, True)


def test_bucket_repeats_pads_only_short_buckets():
    # effective batch 4 x 2 x 1 = 8: 40 images need nothing, 5 need ceil(8 / 5) - 1 = 1.
    counts = {(1024, 1024): 40, (1216, 832): 5}
    assert bucket_repeats(counts, 0, 4, 2, 1, True) == {(1024, 1024): 0, (1216, 832): 1}
    with pytest.raises(ValueError, match="bucket 1216x832: 5 image"):
        bucket_repeats(counts, 0, 4, 2, 1, False, dataset_id="pics")


def test_count_buckets_ignores_skipped():
    plans = [
        plan(1216, 832),
        plan(1216, 832),
        plan(1024, 1024),
        plan(10, 10, minimum_image_size=64),
    ]
    assert count_buckets(plans) == {(1216, 832): 2, (1024, 1024): 1}

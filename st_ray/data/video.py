"""Decoding a clip with PyAV into the frames a video dataset trains on: CPU-only, streaming.

Frames are decoded one at a time and only the ``num_frames`` kept ones are held, each already
resized and cropped to the clip's bucket: a long clip is never decoded whole into memory.
Resampling to ``framerate`` picks, for each target time k / framerate, the frame on screen at
that time (the last one whose timestamp is not after it), so a 30 fps clip at framerate 15
keeps every other frame and an 8 fps clip at 16 shows each frame twice.

Broken clips raise ``BadClip`` with the pipeline's skip reasons: "zero_bytes", "not_a_video"
(no container or video stream PyAV can open), "truncated" (decoding fails part-way),
"too_short" / "too_long" (``min_frames`` / ``max_frames`` at the target rate).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np
from PIL import Image

from st_ray.data.bucket_settings import BucketSettings
from st_ray.data.bucketing import ImagePlan, aspect_in_range, plan_image
from st_ray.data.transforms import ZERO_BYTES, apply_plan
from st_ray.data.video_settings import NOT_A_VIDEO, TOO_LONG, TOO_SHORT, ClipSettings

TRUNCATED = "truncated"
T = TypeVar("T")
# A frame counts as on screen at a target time up to this much before its timestamp
# (container timestamps are rounded: a gif's 0.13 s for 1/8 s).
_TIME_SLACK = 0.02


class BadClip(Exception):
    """A clip that cannot be used; ``reason`` is the skip reason recorded for it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def resample(
    items: Iterable[T], time_of: Callable[[T], float | None], rate: float | None
) -> Iterator[tuple[T, int]]:
    """(frame, how many target frames show it) for ``items`` (frames in display order, their
    timestamps in seconds by ``time_of``) resampled to ``rate`` fps; None keeps every frame
    once. A frame shows at every target time from its own timestamp up to the next frame's."""
    if rate is None:
        for item in items:
            yield item, 1
        return
    step = 1.0 / rate
    target = 0  # index of the next target time, target * step
    previous: tuple[T, float] | None = None
    interval = step  # the source's frame interval, as last seen

    def shown_until(end: float) -> int:
        nonlocal target
        count = 0
        while target * step < end - _TIME_SLACK:
            count, target = count + 1, target + 1
        return count

    for item in items:
        stamp = time_of(item)
        time = float(stamp if stamp is not None else (previous[1] + interval if previous else 0))
        if previous is not None:
            interval = max(time - previous[1], 1e-6)
            if shown := shown_until(time):
                yield previous[0], shown
        previous = (item, time)
    # The last frame lasts as long as the one before it.
    if previous is not None and (shown := shown_until(previous[1] + interval)):
        yield previous[0], shown


def read_clip(
    data: bytes,
    clip: ClipSettings,
    buckets: BucketSettings,
    rng: random.Random,
) -> tuple[np.ndarray, ImagePlan]:
    """(frames (num_frames, H, W, 3) uint8 in the bucket, the bucket plan of the first frame).
    Raises BadClip for a clip the dataset cannot use."""
    import av

    if not data:
        raise BadClip(ZERO_BYTES)
    try:
        container = av.open(io.BytesIO(data))
    except (av.FFmpegError, ValueError, OSError) as err:
        raise BadClip(NOT_A_VIDEO, str(err)) from err
    with container:
        if not container.streams.video:
            raise BadClip(NOT_A_VIDEO, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = clip.framerate or (float(stream.average_rate) if stream.average_rate else None)
        seconds = container.duration / av.time_base if container.duration else None
        if clip.max_frames and seconds and rate and seconds * rate > clip.max_frames + 1:
            raise BadClip(TOO_LONG, f"{seconds:.2f} s at {rate:g} fps")
        return _decode(container, stream, clip, buckets, rng)


def _decode(container, stream, clip, buckets, rng) -> tuple[np.ndarray, ImagePlan]:
    import av

    kept: list[np.ndarray] = []
    counted = 0
    plan: ImagePlan | None = None
    try:
        for frame, shown in resample(container.decode(stream), _time, clip.framerate):
            if plan is None:
                plan = _plan(frame.width, frame.height, buckets, rng)
            if len(kept) < clip.num_frames:
                pixels = apply_plan(frame.to_image(), plan)
                kept.extend([pixels] * min(shown, clip.num_frames - len(kept)))
            counted += shown
            if counted >= clip.min_frames and len(kept) >= clip.num_frames:
                break
    except av.FFmpegError as err:
        reason = TRUNCATED if plan is not None else NOT_A_VIDEO
        raise BadClip(reason, str(err)) from err
    if plan is None:
        raise BadClip(NOT_A_VIDEO, "no frame decoded")
    if counted < clip.min_frames:
        raise BadClip(TOO_SHORT, f"{counted} frames, {clip.min_frames} needed")
    return np.stack(kept), plan


def _time(frame) -> float | None:
    return frame.time


def _plan(width: int, height: int, buckets: BucketSettings, rng: random.Random) -> ImagePlan:
    if not aspect_in_range(
        width / height, buckets.minimum_aspect_ratio, buckets.maximum_aspect_ratio
    ):
        raise BadClip("aspect_out_of_range")
    plan = plan_image(width, height, buckets, rng)
    if plan.skip_reason is not None:
        raise BadClip(plan.skip_reason)
    return plan


def frames_to_images(frames: np.ndarray) -> list[Image.Image]:
    """(F, H, W, 3) uint8 -> PIL images (for previews and validation exports)."""
    return [Image.fromarray(f) for f in frames]

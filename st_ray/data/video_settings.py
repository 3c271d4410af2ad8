"""What a video dataset's clips must look like: its ``video`` block read against the family.

Pure functions (no PyAV, no torch): the config check reports every problem before any work, and
the caching stage builds ``ClipSettings`` from the same fields. SimpleTuner's video block:
``num_frames`` (frames trained on, from each clip's start), ``min_frames`` / ``max_frames`` (the
clip lengths kept), ``is_i2v`` (first-frame conditioning); the run-wide ``framerate`` resamples
every clip to one rate.

A video family's VAE compresses time by ``FamilySpec.frame_step`` (4 or 8 for the video VAEs)
and keeps the first frame alone, so it takes clips of ``frame_step * k + 1`` frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Files a video dataset trains on (a gif in a video dataset is a clip, not its first frame).
VIDEO_EXTENSIONS = frozenset({"mp4", "webm", "mov", "gif"})
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
NOT_A_VIDEO = "not_a_video"


@dataclass(frozen=True)
class ClipSettings:
    """How clips of one video dataset are cut: ``num_frames`` frames from the start, sampled at
    ``framerate`` frames per second (None: every frame as stored); clips shorter than
    ``min_frames`` or longer than ``max_frames`` (None: no limit) are skipped."""

    num_frames: int
    min_frames: int
    max_frames: int | None = None
    framerate: float | None = None
    is_i2v: bool = False

    @classmethod
    def from_fields(cls, block: Mapping[str, Any] | None, framerate: Any) -> ClipSettings:
        """From a dataset's ``video`` block (None: its defaults) and the run's ``framerate``."""
        from st_ray.config.dataset_fields import VIDEO_FIELDS

        values = {o.name: o.default for o in VIDEO_FIELDS}
        values.update({k: v for k, v in (block or {}).items() if v is not None})
        num = int(values["num_frames"])
        return cls(
            num_frames=num,
            min_frames=max(num, int(values.get("min_frames") or num)),
            max_frames=int(values["max_frames"]) if values.get("max_frames") else None,
            framerate=float(framerate) if framerate else None,
            is_i2v=bool(values.get("is_i2v")),
        )

    @classmethod
    def for_entry(cls, entry: Any, options: Mapping[str, Any]) -> ClipSettings | None:
        """A dataset's clip settings (None for an image dataset) under the run ``options``."""
        if not entry.is_video:
            return None
        return cls.from_fields(entry.fields.get("video"), options.get("framerate"))


def valid_frame_count(frames: int, step: int) -> bool:
    """Whether a ``step``-compressing video VAE takes ``frames`` frames (step * k + 1)."""
    return step > 0 and frames >= 1 and (frames - 1) % step == 0


def nearest_frame_counts(frames: int, step: int) -> tuple[int, int]:
    """The valid counts just below (at least 1) and just above ``frames``."""
    below = max(1, (frames - 1) // step * step + 1)
    return below, below + step


def video_problems(
    block: Mapping[str, Any] | None,
    *,
    family: str,
    frame_step: int,
    i2v_flavour: bool,
) -> list[tuple[str, str]]:
    """(field, message) for each thing a video dataset asks that the family cannot do."""
    if frame_step <= 0:
        return [
            (
                "dataset_type",
                f"'video' needs a video model family; model_family '{family}' trains on images",
            )
        ]
    values = dict(block or {})
    problems = []
    num = values.get("num_frames") or ClipSettings.from_fields(None, None).num_frames
    if not valid_frame_count(int(num), frame_step):
        below, above = nearest_frame_counts(int(num), frame_step)
        problems.append(
            (
                "video.num_frames",
                f"{num} frames cannot be encoded by the {family} VAE, which takes "
                f"{frame_step}k+1 frames; use {below} or {above}",
            )
        )
    minimum = values.get("min_frames")
    if minimum and int(minimum) < int(num):
        problems.append(
            (
                "video.min_frames",
                f"{minimum} is below num_frames ({num}): clips shorter than num_frames would "
                "need frame-count buckets, which st_ray does not implement yet; leave it unset "
                "or set it to num_frames or more",
            )
        )
    maximum = values.get("max_frames")
    if maximum and int(maximum) < max(int(num), int(minimum or 0)):
        problems.append(
            ("video.max_frames", f"{maximum} is below num_frames/min_frames: no clip could fit")
        )
    if values.get("is_i2v") and not i2v_flavour:
        problems.append(
            (
                "video.is_i2v",
                f"image-to-video training needs an image-to-video flavour of {family} "
                "(model_flavour); the chosen flavour is text-to-video",
            )
        )
    return problems

"""Saving a video family's validation clip: an mp4 (MPEG-4 Part 2, which every PyAV build
encodes) and a looping gif preview for trackers and model cards that show images only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Frames per second of validation clips when the run sets no framerate.
DEFAULT_FPS = 16


def clip_fps(options: Mapping[str, Any]) -> int:
    return int(options.get("framerate") or DEFAULT_FPS)


def save_clip(frames: Sequence[Any], stem: Path, fps: int) -> list[Path]:
    """Write PIL ``frames`` as ``<stem>.mp4`` and ``<stem>.gif``; returns both paths."""
    import av
    import numpy as np

    mp4, gif = stem.with_suffix(".mp4"), stem.with_suffix(".gif")
    width, height = frames[0].size
    with av.open(str(mp4), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        # yuv420p halves the chroma planes: the encoder needs even sides.
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        for image in frames:
            array = np.asarray(image.convert("RGB"))
            array = np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    first, *rest = [image.convert("RGB") for image in frames]
    first.save(gif, save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
    return [mp4, gif]

"""Generate a small, deterministic example video dataset for tests, demos and smoke runs.

A few clips of coloured shapes moving across a gradient, written with PyAV in each container a
video dataset takes (mp4, webm, mov, gif), each with a ``.txt`` caption; plus one broken clip
(bytes no container recognises) and one too short for the default clip length. Nothing is
downloaded.

CLI: ``python -m st_ray.example_videos --out DIR [--frames N] [--fps N]``
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (file name, container format, codec, pixel format, shape colour (RGB), caption)
_CLIPS = (
    ("red-square.mp4", "mp4", "mpeg4", "yuv420p", (214, 48, 49), "a red square sliding right"),
    ("blue-bar.webm", "webm", "libvpx", "yuv420p", (41, 128, 185), "a blue bar moving down"),
    ("green-box.mov", "mov", "mpeg4", "yuv420p", (39, 174, 96), "a green box drifting"),
    ("pink-dot.gif", "gif", "gif", "rgb8", (232, 67, 147), "a pink dot bouncing"),
)
BROKEN = "broken.mp4"
SHORT = "short.mp4"


@dataclass(frozen=True)
class ExampleVideos:
    root: Path
    clips: tuple[Path, ...]  # the good clips
    broken: Path
    short: Path
    frames: int  # frames of each good clip
    fps: int


def render_frames(frames: int, width: int, height: int, color: tuple[int, int, int], phase: int):
    """Frames (H, W, 3) uint8 of a square moving across a vertical gradient, one at a time."""
    gradient = np.linspace(40, 200, height, dtype=np.float32)[:, None, None]
    base = np.broadcast_to(gradient, (height, width, 3)).astype(np.uint8)
    side = max(4, min(width, height) // 3)
    for i in range(frames):
        frame = base.copy()
        left = (phase * 7 + i * 3) % max(1, width - side)
        top = (phase * 5 + i * 2) % max(1, height - side)
        frame[top : top + side, left : left + side] = color
        yield frame


def write_clip(
    path: Path,
    frames: int,
    *,
    fps: int = 8,
    size: tuple[int, int] = (64, 48),
    container_format: str = "mp4",
    codec: str = "mpeg4",
    pixel_format: str = "yuv420p",
    color: tuple[int, int, int] = (214, 48, 49),
    phase: int = 0,
) -> Path:
    """Encode ``frames`` frames of a moving square (``size`` = width, height) into ``path``."""
    import av

    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = pixel_format
        for array in render_frames(frames, size[0], size[1], color, phase):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def generate(
    out_dir: str | Path, *, frames: int = 12, fps: int = 8, size: tuple[int, int] = (64, 48)
) -> ExampleVideos:
    """Write the example clips (``frames`` frames at ``fps`` each, ``size`` = width, height),
    the broken and the short clip (2 frames) and their captions into ``out_dir``."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    clips = []
    for phase, (name, fmt, codec, pix, color, caption) in enumerate(_CLIPS):
        path = write_clip(
            root / name,
            frames,
            fps=fps,
            size=size,
            container_format=fmt,
            codec=codec,
            pixel_format=pix,
            color=color,
            phase=phase,
        )
        path.with_suffix(".txt").write_text(caption + "\n")
        clips.append(path)
    broken = root / BROKEN
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    broken.with_suffix(".txt").write_text("a broken clip\n")
    short = write_clip(root / SHORT, 2, fps=fps, size=size, phase=9)
    short.with_suffix(".txt").write_text("a clip too short to train on\n")
    return ExampleVideos(root, tuple(clips), broken, short, frames, fps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the clips into")
    parser.add_argument("--frames", type=int, default=12, help="frames per good clip")
    parser.add_argument("--fps", type=int, default=8, help="frames per second")
    args = parser.parse_args(argv)
    videos = generate(args.out, frames=args.frames, fps=args.fps)
    print(json.dumps({"root": str(videos.root), "clips": [p.name for p in videos.clips]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

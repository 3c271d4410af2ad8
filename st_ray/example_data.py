"""Generate a small, deterministic example image dataset for tests, demos and smoke runs.

The dataset exercises what a SimpleTuner-style loader must cope with: mixed sizes and aspect
ratios (including images below typical minimum sizes and one very large image), JPEG and PNG,
nested folders, ``.txt`` caption sidecars (one missing, one with several lines), deliberately
broken files, and the same listing as ``metadata.parquet`` / ``metadata.csv``.

CLI: ``python -m st_ray.example_data --out DIR [--seed N]``
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

# Column order shared by metadata.parquet and metadata.csv; the names match what a
# SimpleTuner `parquet` block would point at (filename_column, caption_column, ...).
METADATA_COLUMNS = ("filename", "caption", "fallback_caption", "width", "height")

_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 48, 49),
    "orange": (243, 156, 18),
    "yellow": (241, 196, 15),
    "green": (39, 174, 96),
    "teal": (22, 160, 133),
    "blue": (41, 128, 185),
    "purple": (142, 68, 173),
    "pink": (232, 67, 147),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
_SHAPES = ("circle", "square", "triangle", "ring", "stripe")


@dataclass(frozen=True)
class _Spec:
    """One valid image to draw: where, how big, which encoding and which PIL mode."""

    relpath: str
    width: int
    height: int
    mode: str = "RGB"
    caption: bool = True
    multiline: bool = False


# Fixed file list, so only pixel content and captions vary with the seed. The sizes cover
# the aspect-bucketing cases a trainer meets; tiny ones fall below usual minimum_image_size.
_SPECS: tuple[_Spec, ...] = (
    _Spec("landscape_1216x832.jpg", 1216, 832, multiline=True),
    _Spec("landscape_640x480.png", 640, 480),
    _Spec("portrait_832x1216.jpg", 832, 1216),
    _Spec("portrait_480x640.png", 480, 640),
    _Spec("square_1024x1024.png", 1024, 1024),
    _Spec("square_512x512.jpg", 512, 512),
    _Spec("tiny_48x48.png", 48, 48),
    _Spec("tiny_100x60.jpg", 100, 60),
    _Spec("huge_3000x2000.jpg", 3000, 2000),
    _Spec("odd_1023x767.jpg", 1023, 767),
    _Spec("grayscale_640x640.jpg", 640, 640, mode="L"),
    _Spec("rgba_800x600.png", 800, 600, mode="RGBA"),
    _Spec("nested/landscape_1344x768.png", 1344, 768),
    _Spec("nested/tall_640x1536.png", 640, 1536, caption=False),
    _Spec("nested/deeper/wide_1536x640.jpg", 1536, 640),
    _Spec("nested/deeper/square_768x768.jpg", 768, 768),
)

# Broken files carry caption sidecars, so only decoding can tell a loader to skip them.
_TRUNCATED = "broken_truncated.jpg"
_EMPTY = "broken_empty.png"
_NOT_AN_IMAGE = "broken_not_an_image.jpg"


@dataclass(frozen=True)
class ExampleImage:
    """A valid image the generator wrote, with what a loader should find for it."""

    path: Path  # absolute
    relpath: str  # POSIX path relative to images_dir, as in the metadata `filename` column
    width: int
    height: int
    format: str  # "JPEG" or "PNG"
    mode: str  # PIL mode it was saved in
    caption: str | None  # sidecar text without its trailing newline; None when deliberately absent
    fallback_caption: str


@dataclass(frozen=True)
class ExampleDataset:
    """What ``generate`` produced: paths plus the expected counts tests assert against."""

    root: Path
    images_dir: Path
    metadata_parquet: Path
    metadata_csv: Path
    manifest: Path
    images: tuple[ExampleImage, ...]
    broken_files: tuple[Path, ...]

    @property
    def valid_images(self) -> tuple[Path, ...]:
        return tuple(image.path for image in self.images)

    @property
    def missing_caption_images(self) -> tuple[Path, ...]:
        return tuple(image.path for image in self.images if image.caption is None)

    @property
    def multiline_caption_images(self) -> tuple[Path, ...]:
        return tuple(i.path for i in self.images if i.caption is not None and "\n" in i.caption)

    @property
    def num_valid(self) -> int:
        return len(self.images)

    @property
    def num_broken(self) -> int:
        return len(self.broken_files)

    @property
    def num_missing_captions(self) -> int:
        return len(self.missing_caption_images)


def _gradient(
    size: tuple[int, int], start: tuple[int, int, int], end: tuple[int, int, int], horizontal: bool
) -> Image.Image:
    # Resize PIL's built-in 256x256 ramp and use it as a blend mask: cheap even for the
    # 3000x2000 image, and smooth content keeps its JPEG small.
    ramp = Image.linear_gradient("L")
    if horizontal:
        ramp = ramp.transpose(Image.Transpose.ROTATE_90)
    mask = ramp.resize(size, Image.Resampling.BILINEAR)
    return Image.composite(Image.new("RGB", size, end), Image.new("RGB", size, start), mask)


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    box: tuple[int, int, int, int],
    color: tuple[int, int, int],
) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)
    elif shape == "ring":
        draw.ellipse(box, outline=color, width=max(1, (x1 - x0) // 8))
    else:  # stripe
        draw.rectangle(
            (
                x0,
                (y0 + y1) // 2 - max(1, (y1 - y0) // 8),
                x1,
                (y0 + y1) // 2 + max(1, (y1 - y0) // 8),
            ),
            fill=color,
        )


def _render(spec: _Spec, rng: random.Random) -> tuple[Image.Image, list[str], str]:
    """Draw one image; returns it, its caption lines and a tag-style fallback caption."""
    bg_a, bg_b = rng.sample(sorted(_COLORS), 2)
    image = _gradient((spec.width, spec.height), _COLORS[bg_a], _COLORS[bg_b], rng.random() < 0.5)
    draw = ImageDraw.Draw(image)
    shapes: list[tuple[str, str]] = []
    for _ in range(rng.randint(1, 3)):
        shape = rng.choice(_SHAPES)
        color = rng.choice([c for c in sorted(_COLORS) if c not in (bg_a, bg_b)])
        side = max(4, int(min(spec.width, spec.height) * rng.uniform(0.2, 0.5)))
        x0 = rng.randint(0, spec.width - side)
        y0 = rng.randint(0, spec.height - side)
        _draw_shape(draw, shape, (x0, y0, x0 + side, y0 + side), _COLORS[color])
        shapes.append((color, shape))
    if spec.mode == "RGBA":
        # A real alpha channel (transparent left half) so loaders must handle compositing.
        alpha = Image.new("L", image.size, 255)
        ImageDraw.Draw(alpha).rectangle((0, 0, spec.width // 2, spec.height), fill=96)
        image.putalpha(alpha)
    elif spec.mode != "RGB":
        image = image.convert(spec.mode)

    subject = " and ".join(f"a {color} {shape}" for color, shape in shapes)
    lines = [f"{subject} on a {bg_a} to {bg_b} gradient"]
    if spec.multiline:
        # Each line is an alternative caption for the same image (SimpleTuner splits on \n).
        lines += [f"simple geometric art, {subject}", f"{bg_a} and {bg_b} abstract background"]
    tags = [c for c, _ in shapes] + [s for _, s in shapes] + [bg_a, bg_b, "gradient"]
    fallback = ", ".join(dict.fromkeys(tags))
    return image, lines, fallback


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        # No EXIF/ICC or timestamps: same pixels -> same bytes.
        image.save(buffer, "JPEG", quality=80)
    else:
        image.save(buffer, "PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _format_for(relpath: str) -> str:
    return "JPEG" if relpath.lower().endswith((".jpg", ".jpeg")) else "PNG"


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # newline="" so the file bytes do not depend on the platform.
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def generate(out_dir: str | Path, seed: int = 0) -> ExampleDataset:
    """Write the example dataset under ``out_dir`` (created if needed) and describe it.

    The same seed always yields byte-identical files. Files the generator owns are
    overwritten; anything else already in ``out_dir`` is left alone, so use an empty folder
    if the counts must be exact.
    """
    root = Path(out_dir).resolve()
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    # One RNG per image, keyed by seed and path, so adding an image never reshuffles others.
    images: list[ExampleImage] = []
    for spec in _SPECS:
        rng = random.Random(f"{seed}:{spec.relpath}")
        image, lines, fallback = _render(spec, rng)
        fmt = _format_for(spec.relpath)
        path = images_dir / spec.relpath
        _write_bytes(path, _encode(image, fmt))
        caption = "\n".join(lines) if spec.caption else None
        if caption is not None:
            _write_text(path.with_suffix(".txt"), caption + "\n")
        images.append(
            ExampleImage(
                path, spec.relpath, spec.width, spec.height, fmt, spec.mode, caption, fallback
            )
        )

    broken = _write_broken(images_dir, seed)
    parquet_path, csv_path = _write_metadata(root, images)
    manifest = root / "manifest.json"
    dataset = ExampleDataset(
        root, images_dir, parquet_path, csv_path, manifest, tuple(images), broken
    )
    _write_text(manifest, json.dumps(_manifest(dataset, seed), indent=2) + "\n")
    return dataset


def _write_broken(images_dir: Path, seed: int) -> tuple[Path, ...]:
    # A real JPEG cut short: the header parses, so only a full decode notices the damage.
    rng = random.Random(f"{seed}:{_TRUNCATED}")
    image, _, _ = _render(_Spec(_TRUNCATED, 320, 240), rng)
    full = _encode(image, "JPEG")
    truncated = images_dir / _TRUNCATED
    _write_bytes(truncated, full[: len(full) * 2 // 5])
    empty = images_dir / _EMPTY
    _write_bytes(empty, b"")
    text = images_dir / _NOT_AN_IMAGE
    _write_text(text, "This is a text file wearing a .jpg extension.\n")
    for path in (truncated, empty, text):
        _write_text(path.with_suffix(".txt"), f"a broken file named {path.stem}\n")
    return truncated, empty, text


def _write_metadata(root: Path, images: list[ExampleImage]) -> tuple[Path, Path]:
    rows = {
        "filename": [i.relpath for i in images],
        "caption": [i.caption for i in images],
        "fallback_caption": [i.fallback_caption for i in images],
        "width": [i.width for i in images],
        "height": [i.height for i in images],
    }
    schema = pa.schema(
        [
            ("filename", pa.string()),
            ("caption", pa.string()),
            ("fallback_caption", pa.string()),
            ("width", pa.int64()),
            ("height", pa.int64()),
        ]
    )
    parquet_path = root / "metadata.parquet"
    pq.write_table(pa.Table.from_pydict(rows, schema=schema), parquet_path)

    csv_path = root / "metadata.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(METADATA_COLUMNS)
        for i in images:
            # The missing caption is an empty cell: CSV has no null.
            writer.writerow([i.relpath, i.caption or "", i.fallback_caption, i.width, i.height])
    return parquet_path, csv_path


def _manifest(dataset: ExampleDataset, seed: int) -> dict[str, object]:
    def rel(path: Path) -> str:
        return path.relative_to(dataset.images_dir).as_posix()

    return {
        "seed": seed,
        "num_valid": dataset.num_valid,
        "num_broken": dataset.num_broken,
        "num_missing_captions": dataset.num_missing_captions,
        "valid_images": [
            {
                "filename": i.relpath,
                "width": i.width,
                "height": i.height,
                "format": i.format,
                "mode": i.mode,
                "has_caption": i.caption is not None,
            }
            for i in dataset.images
        ],
        "broken_files": [rel(p) for p in dataset.broken_files],
        "missing_caption_images": [rel(p) for p in dataset.missing_caption_images],
        "multiline_caption_images": [rel(p) for p in dataset.multiline_caption_images],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m st_ray.example_data",
        description="Write a small deterministic example image dataset.",
    )
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="content seed (default: 0)")
    args = parser.parse_args(argv)
    dataset = generate(args.out, seed=args.seed)
    print(
        f"wrote {dataset.num_valid} valid images ({dataset.num_missing_captions} without caption) "
        f"and {dataset.num_broken} broken files to {dataset.images_dir}"
    )
    print(f"metadata: {dataset.metadata_parquet}, {dataset.metadata_csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

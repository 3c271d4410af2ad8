"""Model captioning with the zoo's tiny BLIP: deterministic captions, saved once, reused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from st_ray import zoo
from st_ray.data.captioning import (
    ModelCaptioner,
    clean_caption,
    needs_captioning,
    read_generated_captions,
    sidecar_path,
    write_generated_captions,
)
from st_ray.data.captions import resolve_captions

FIELDS = {"caption_strategy": "textfile"}


@pytest.fixture(scope="module")
def captioner_path(zoo_root: Path) -> Path:
    return zoo.ensure("captioner", zoo_root)


@pytest.fixture(scope="module")
def captioner(captioner_path: Path) -> ModelCaptioner:
    return ModelCaptioner(str(captioner_path), prompt=None, max_new_tokens=6, device="cpu")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Three images; ``c`` already has a hand-written caption."""
    size = {"a.png": (40, 30), "b.jpg": (64, 64), "nested/c.png": (50, 80)}
    for index, (name, (w, h)) in enumerate(size.items()):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[:, : w // 2] = (40 + 90 * index, 200 - 60 * index, 30 * index)
        Image.fromarray(pixels).save(path)
    (tmp_path / "nested/c.txt").write_text("a hand-written caption", encoding="utf-8")
    return tmp_path


def _rows(root: Path) -> list[dict]:
    """Discovery + caption resolution as the pipeline does it, for the textfile strategy."""
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".png", ".jpg")):
        sidecar = path.with_suffix(".txt")
        text = sidecar.read_text(encoding="utf-8") if sidecar.exists() else None
        image_id = path.relative_to(root).as_posix()
        captions = resolve_captions(
            None,
            image_id=image_id,
            sidecar_text=text,
            meta_caption=None,
            meta_fallback=None,
            entry_fields=FIELDS,
        )
        rows.append(
            {
                "image_id": image_id,
                "uri": str(path),
                "captions": captions,
                "existing": text,
                "pixels": np.asarray(Image.open(path).convert("RGB")),
            }
        )
    return rows


def _caption(captioner: ModelCaptioner, rows: list[dict]) -> list[str]:
    pixels = np.empty(len(rows), dtype=object)  # ragged sizes, as in a Ray numpy batch
    pixels[:] = [r["pixels"] for r in rows]
    ids = np.array([r["image_id"] for r in rows], dtype=object)
    out = captioner({"image_id": ids, "pixels": pixels})
    assert list(out["image_id"]) == list(ids)  # input columns pass through
    return list(out["generated_caption"])


def test_zoo_captioner_layout(captioner_path: Path, zoo_root: Path) -> None:
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (captioner_path / name).is_file(), name
    assert zoo.ensure("captioner", zoo_root) == captioner_path  # reused, not rebuilt
    assert "captioner" in zoo.EXTRAS and "captioner" not in zoo.FAMILIES


def test_caption_write_and_rerun(captioner: ModelCaptioner, captioner_path: Path, images) -> None:
    rows = _rows(images)
    todo = [r for r in rows if needs_captioning(r["captions"], r["existing"])]
    assert [r["image_id"] for r in todo] == ["a.png", "b.jpg"]

    captions = _caption(captioner, todo)
    assert all(isinstance(c, str) and c.strip() for c in captions)
    assert captions[0] != captions[1]  # depends on the image
    # Deterministic: same model again, and a freshly loaded copy.
    assert _caption(captioner, todo) == captions
    fresh = ModelCaptioner(str(captioner_path), None, 6, "cpu")
    assert _caption(fresh, todo) == captions

    report = write_generated_captions(
        [{**r, "generated_caption": c} for r, c in zip(todo, captions, strict=True)]
    )
    assert report.written == ("a.png", "b.jpg") and not report.kept_existing
    assert (images / "a.txt").read_text(encoding="utf-8") == captions[0]
    assert (images / "b.txt").read_text(encoding="utf-8") == captions[1]
    assert (images / "nested/c.txt").read_text(encoding="utf-8") == "a hand-written caption"
    assert not list(images.rglob("*.tmp"))

    # Second pass: every image now has a caption, nothing goes to the model.
    again = _rows(images)
    assert [r["captions"] for r in again] == [
        [captions[0]],
        [captions[1]],
        ["a hand-written caption"],
    ]
    assert not [r for r in again if needs_captioning(r["captions"], r["existing"])]
    # Even if asked, existing captions are never overwritten.
    forced = write_generated_captions([{**r, "generated_caption": "overwritten?"} for r in again])
    assert forced.written == () and forced.kept_existing == ("a.png", "b.jpg", "nested/c.png")
    assert (images / "a.txt").read_text(encoding="utf-8") == captions[0]
    assert (images / "nested/c.txt").read_text(encoding="utf-8") == "a hand-written caption"


def test_prompt_and_image_bytes(captioner_path: Path, images) -> None:
    prompted = ModelCaptioner(str(captioner_path), "a picture of", 4, "cpu")
    data = [(images / name).read_bytes() for name in ("a.png", "b.jpg")]
    out = prompted({"image_bytes": np.array(data, dtype=object)})
    captions = list(out["generated_caption"])
    assert len(captions) == 2 and all(captions)
    assert not any(c.startswith("a picture of") for c in captions)  # prompt removed
    pixels = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in data]
    assert prompted.caption(pixels) == captions  # same images as arrays: same captions


def test_parquet_output(tmp_path: Path) -> None:
    table = tmp_path / "gen" / "generated_captions.parquet"
    rows = [
        {"image_id": "x.png", "uri": "s3://b/x.png", "generated_caption": " a\nb "},
        {"image_id": "y.png", "uri": "s3://b/y.png", "generated_caption": ""},
    ]
    report = write_generated_captions(rows, "parquet", table)
    assert report.written == ("x.png",) and report.empty == ("y.png",)
    assert read_generated_captions(table) == {"x.png": "a b"}  # one line
    rows = [
        {"image_id": "x.png", "generated_caption": "replacement"},
        {"image_id": "z.png", "generated_caption": "new"},
    ]
    report = write_generated_captions(rows, "parquet", table)
    assert report.written == ("z.png",) and report.kept_existing == ("x.png",)
    assert read_generated_captions(table) == {"x.png": "a b", "z.png": "new"}
    assert needs_captioning([], read_generated_captions(table).get("q.png"))
    assert not needs_captioning([], read_generated_captions(table).get("x.png"))


def test_helpers() -> None:
    assert needs_captioning([], None)
    assert not needs_captioning(["caption"], None)
    assert not needs_captioning([], "")  # an empty .txt exists: never overwritten
    assert clean_caption("A picture of  a cat\n", "a picture of") == "a cat"
    assert clean_caption("a dog", "a picture of") == "a dog"
    assert sidecar_path("/d/img.v1.jpg") == Path("/d/img.v1.txt")
    assert sidecar_path("file:///d/img.png") == Path("/d/img.txt")
    with pytest.raises(ValueError, match="parquet"):
        sidecar_path("s3://bucket/img.png")

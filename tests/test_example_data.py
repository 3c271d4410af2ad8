"""Tests for the example dataset generator (st_ray.example_data)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

from st_ray.example_data import METADATA_COLUMNS, ExampleDataset, generate

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> ExampleDataset:
    return generate(tmp_path_factory.mktemp("example"), seed=0)


@pytest.fixture(autouse=True)
def _strict_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    # Some code sets this globally; it would make the truncated JPEG decode "successfully".
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path: Path, dataset: ExampleDataset) -> None:
    again = generate(tmp_path / "again", seed=0)
    assert _tree(again.root) == _tree(dataset.root)


def test_other_seed_changes_content_not_layout(tmp_path: Path, dataset: ExampleDataset) -> None:
    other = _tree(generate(tmp_path / "other", seed=1).root)
    base = _tree(dataset.root)
    assert other.keys() == base.keys()
    assert other["images/square_512x512.jpg"] != base["images/square_512x512.jpg"]


def test_counts(dataset: ExampleDataset) -> None:
    assert dataset.num_valid == len(dataset.images) == 16
    assert dataset.num_broken == 3
    assert dataset.num_missing_captions == 1
    assert len(dataset.multiline_caption_images) == 1
    # Everything with an image suffix on disk is either a valid image or a broken file.
    on_disk = {p for p in dataset.images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    assert on_disk == set(dataset.valid_images) | set(dataset.broken_files)
    assert not set(dataset.valid_images) & set(dataset.broken_files)


def test_manifest_records_counts(dataset: ExampleDataset) -> None:
    manifest = json.loads(dataset.manifest.read_text())
    assert manifest["num_valid"] == dataset.num_valid
    assert manifest["num_broken"] == dataset.num_broken
    assert manifest["num_missing_captions"] == dataset.num_missing_captions
    assert [i["filename"] for i in manifest["valid_images"]] == [i.relpath for i in dataset.images]


def test_layout_covers_the_edge_cases(dataset: ExampleDataset) -> None:
    sizes = {(i.width, i.height) for i in dataset.images}
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    assert any(w == h for w, h in sizes)
    assert any(max(w, h) < 128 for w, h in sizes), "needs an image below minimum sizes"
    assert any(w * h >= 3000 * 2000 for w, h in sizes), "needs a huge image"
    assert {i.format for i in dataset.images} == {"JPEG", "PNG"}
    assert any("/" in i.relpath for i in dataset.images), "needs a nested image"
    assert any(i.relpath.count("/") >= 2 for i in dataset.images), "needs two levels of nesting"
    huge = max(dataset.images, key=lambda i: i.width * i.height)
    assert huge.path.stat().st_size < 1_000_000


def test_valid_images_decode_to_their_intended_size(dataset: ExampleDataset) -> None:
    for image in dataset.images:
        with Image.open(image.path) as decoded:
            decoded.load()
            assert decoded.size == (image.width, image.height), image.relpath
            assert decoded.format == image.format, image.relpath
            assert decoded.mode == image.mode, image.relpath


@pytest.mark.parametrize(
    "name", ["broken_truncated.jpg", "broken_empty.png", "broken_not_an_image.jpg"]
)
def test_broken_files_fail_to_decode(dataset: ExampleDataset, name: str) -> None:
    path = dataset.images_dir / name
    assert path in dataset.broken_files
    # UnidentifiedImageError (unreadable header) is an OSError too.
    with pytest.raises(OSError), Image.open(path) as decoded:
        decoded.load()


def test_broken_files_have_the_intended_damage(dataset: ExampleDataset) -> None:
    truncated = dataset.images_dir / "broken_truncated.jpg"
    assert truncated.read_bytes()[:2] == b"\xff\xd8", "should start like a real JPEG"
    assert (dataset.images_dir / "broken_empty.png").stat().st_size == 0
    assert (dataset.images_dir / "broken_not_an_image.jpg").read_text().strip()


def test_caption_sidecars(dataset: ExampleDataset) -> None:
    for image in dataset.images:
        sidecar = image.path.with_suffix(".txt")
        if image.caption is None:
            assert not sidecar.exists(), image.relpath
            continue
        text = sidecar.read_text(encoding="utf-8")
        assert text == image.caption + "\n"
        assert text.strip(), image.relpath
    (multiline,) = dataset.multiline_caption_images
    lines = multiline.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 2 and all(line.strip() for line in lines)


def _expected_rows(dataset: ExampleDataset) -> list[dict[str, object]]:
    return [
        {
            "filename": i.relpath,
            "caption": i.caption,
            "fallback_caption": i.fallback_caption,
            "width": i.width,
            "height": i.height,
        }
        for i in dataset.images
    ]


def test_parquet_matches_images(dataset: ExampleDataset) -> None:
    table = pq.read_table(dataset.metadata_parquet)
    assert tuple(table.column_names) == METADATA_COLUMNS
    rows = table.to_pylist()
    assert rows == _expected_rows(dataset)
    for row in rows:
        path = dataset.images_dir / str(row["filename"])
        with Image.open(path) as decoded:
            assert decoded.size == (row["width"], row["height"])
        assert row["fallback_caption"]
    assert sum(row["caption"] is None for row in rows) == dataset.num_missing_captions


def test_csv_matches_parquet(dataset: ExampleDataset) -> None:
    with dataset.metadata_csv.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == METADATA_COLUMNS
        rows = list(reader)
    expected = [
        {k: "" if v is None else str(v) for k, v in row.items()} for row in _expected_rows(dataset)
    ]
    assert rows == expected


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "st_ray.example_data", "--out", str(out), "--seed", "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "16 valid images" in result.stdout
    assert (out / "metadata.parquet").is_file() and (out / "images").is_dir()

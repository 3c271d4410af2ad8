"""Tests for st_ray.data.discovery: local folders, parquet/JSONL and CSV metadata, S3 (through a
real moto server) and Hugging Face datasets on disk, plus reading each kind of row's bytes."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from st_ray.config.datasets import DatasetEntry, load_datasets
from st_ray.config.errors import ProblemList
from st_ray.data import discovery
from st_ray.data.discovery import DiscoveryError, discover, read_image_bytes
from st_ray.data.discovery_rows import ROW_KEYS, DatasetNotFoundError
from st_ray.example_data import ExampleDataset


def make_entry(tmp_path: Path, **fields: Any) -> DatasetEntry:
    """Validate one image dataset entry the way a run does (multidatabackend.json)."""
    config = tmp_path / "multidatabackend.json"
    config.write_text(json.dumps([{"id": "data", **fields}]))
    problems = ProblemList()
    run = {"model_family": "sdxl", "output_dir": str(tmp_path / "out")}
    entries = load_datasets(config, run, {}, problems, tmp_path)
    assert not problems, problems.items
    return entries[0]


def with_fields(entry: DatasetEntry, **fields: Any) -> DatasetEntry:
    """``entry`` with fields replaced after validation (the loader checks a parquet path from the
    working directory and the config folder only; discovery also looks in the data folder)."""
    return dataclasses.replace(entry, fields={**entry.fields, **fields})


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["image_id"]: row for row in rows}


def all_image_ids(dataset: ExampleDataset) -> set[str]:
    broken = {p.relative_to(dataset.images_dir).as_posix() for p in dataset.broken_files}
    return {image.relpath for image in dataset.images} | broken


# -- local folders ------------------------------------------------------------------------------


def test_local_recursive_discovery(tmp_path, example_dataset) -> None:
    entry = make_entry(tmp_path, instance_data_dir=str(example_dataset.images_dir))
    rows = discover(entry)
    assert [r["image_id"] for r in rows] == sorted(r["image_id"] for r in rows)
    assert all(tuple(row) == ROW_KEYS for row in rows)
    found = by_id(rows)
    assert set(found) == all_image_ids(example_dataset)
    assert len(rows) == example_dataset.num_valid + example_dataset.num_broken
    for image in example_dataset.images:
        row = found[image.relpath]
        assert row["dataset_id"] == "data"
        assert row["uri"] == str(image.path)
        assert row["size_bytes"] == image.path.stat().st_size
        if image.caption is None:
            assert row["caption_uri"] is None
        else:
            assert row["caption_uri"] == str(image.path.with_suffix(".txt"))
        assert row["meta_caption"] is None and row["meta_width"] is None
    assert found["nested/deeper/wide_1536x640.jpg"]["caption_uri"].endswith(
        "nested/deeper/wide_1536x640.txt"
    )
    assert found["broken_empty.png"]["size_bytes"] == 0


def test_local_extensions_and_caption_pairing(tmp_path) -> None:
    """Every extension Pillow opens is an image (as in SimpleTuner); other files are counted
    as ignored, captions are not."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    images = ("A.JPG", "b.Png", "c.webp", "d.TIFF", "e.bmp", "f.tif", "g.jpeg", "h.gif")
    images += ("i.avif", "j.ppm", "k.tga", "l.qoi")
    for name in images:
        (root / name).write_bytes(b"x")
    (root / "A.txt").write_text("caption of A")
    (root / "sub" / "b.txt").write_text("not b.Png's caption: another folder")
    (root / "notes.txt").write_text("no image")
    for name in ("meta.json", ".DS_Store", "sub/drawing.svg"):
        (root / name).write_bytes(b"x")
    rows, ignored = discovery.discover_counted(make_entry(tmp_path, instance_data_dir=str(root)))
    assert set(by_id(rows)) == set(images)
    assert by_id(rows)["A.JPG"]["caption_uri"] == str(root / "A.txt")
    assert by_id(rows)["b.Png"]["caption_uri"] is None
    assert ignored == 3  # meta.json, .DS_Store, drawing.svg; the .txt files are captions


@pytest.mark.parametrize("ext", ["gif", "avif", "ppm", "tga"])
def test_formats_simpletuner_takes_decode_to_rgb(tmp_path, ext) -> None:
    """The extensions discovery now takes decode for caching; a GIF gives its first frame."""
    from st_ray.data.transforms import load_image

    first = Image.new("RGB", (24, 16), (200, 30, 30))
    path = tmp_path / f"image.{ext}"
    if ext == "gif":
        second = Image.new("RGB", (24, 16), (30, 30, 200))
        first.save(path, save_all=True, append_images=[second])
    else:
        first.save(path)
    image = load_image(path.read_bytes())
    assert image.mode == "RGB" and image.size == (24, 16)
    red, green, blue = image.getpixel((12, 8))
    assert red > 150 and green < 80 and blue < 80, (red, green, blue)


def test_cache_summary_counts_ignored_files() -> None:
    from st_ray.data.pipeline import CacheReport, DatasetReport

    report = CacheReport(
        [DatasetReport("photos", "/c", seen=3, encoded=3, ignored=2), DatasetReport("b", "/d")],
        "/t",
    )
    table = report.table()
    assert "photos: ignored: 2 files with other extensions" in table
    assert "b: ignored" not in table  # nothing ignored, nothing said


def test_relative_folder_resolves_from_config_folder(tmp_path, monkeypatch) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "one.png").write_bytes(b"x")
    entry = make_entry(tmp_path, instance_data_dir="imgs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rows = discover(entry, base_dir=tmp_path)
    assert [r["uri"] for r in rows] == [str(tmp_path / "imgs" / "one.png")]


def test_missing_local_folder_names_dataset(tmp_path) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    entry = make_entry(tmp_path, instance_data_dir=str(folder))
    folder.rmdir()
    with pytest.raises(DatasetNotFoundError, match=r"dataset 'data'.*gone"):
        discover(entry)


def test_text_embed_datasets_are_not_discovered(tmp_path) -> None:
    entry = DatasetEntry("embeds", "text_embeds", "local", {}, 0)
    with pytest.raises(DiscoveryError, match="embeds"):
        discover(entry)


# -- parquet / JSONL metadata -------------------------------------------------------------------


def parquet_fields(path: str, **overrides: Any) -> dict[str, Any]:
    block = {
        "path": path,
        "filename_column": "filename",
        "caption_column": "caption",
        "fallback_caption_column": "fallback_caption",
        "width_column": "width",
        "height_column": "height",
        "identifier_includes_extension": True,
    }
    block.update(overrides)
    return {"metadata_backend": "parquet", "caption_strategy": "parquet", "parquet": block}


def test_parquet_metadata_local(tmp_path, example_dataset) -> None:
    entry = make_entry(
        tmp_path,
        instance_data_dir=str(example_dataset.images_dir),
        **parquet_fields(str(example_dataset.metadata_parquet)),
    )
    rows = by_id(discover(entry))
    # Only files with a table row: the broken files are not in the table.
    assert set(rows) == {image.relpath for image in example_dataset.images}
    for image in example_dataset.images:
        row = rows[image.relpath]
        assert (row["meta_width"], row["meta_height"]) == (image.width, image.height)
        assert row["meta_caption"] == image.caption
        assert row["meta_fallback_caption"] == image.fallback_caption
        assert row["size_bytes"] == image.path.stat().st_size
        assert row["uri"] == str(image.path)


def test_parquet_identifiers_without_extension(tmp_path) -> None:
    root = tmp_path / "data"
    (root / "nested").mkdir(parents=True)
    (root / "1001.png").write_bytes(b"x")
    (root / "nested" / "cat.jpg").write_bytes(b"x")
    (root / "unlisted.png").write_bytes(b"x")
    table = pa.table(
        {
            "id": ["1001", "cat", "no-such-file"],
            "description": ["a number", None, "orphan"],
            "tags": ["t1", "t2", "t3"],
        }
    )
    pq.write_table(table, root / "meta.parquet")
    entry = make_entry(
        tmp_path,
        instance_data_dir=str(root),
        metadata_backend="parquet",
        # Defaults: filename_column "id", caption_column "description", bare ids.
        parquet={"path": str(root / "meta.parquet"), "fallback_caption_column": "tags"},
    )
    # A path relative to the data folder is found there.
    entry = with_fields(entry, parquet={**entry["parquet"], "path": "meta.parquet"})
    rows = by_id(discover(entry))
    assert set(rows) == {"1001.png", "nested/cat.jpg"}
    assert rows["1001.png"]["meta_caption"] == "a number"
    assert rows["nested/cat.jpg"]["meta_caption"] is None
    assert rows["nested/cat.jpg"]["meta_fallback_caption"] == "t2"
    assert rows["1001.png"]["meta_width"] is None  # no width column in the table


def test_parquet_ids_with_extension_tolerated_when_flag_is_false(tmp_path, example_dataset) -> None:
    fields = parquet_fields(
        str(example_dataset.metadata_parquet), identifier_includes_extension=False
    )
    entry = make_entry(tmp_path, instance_data_dir=str(example_dataset.images_dir), **fields)
    assert len(discover(entry)) == example_dataset.num_valid


def test_jsonl_metadata_and_missing_columns(tmp_path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.png").write_bytes(b"x")
    lines = [{"file": "a.png", "text": ["first", "second"], "w": 64, "h": 32}]
    (root / "meta.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    block = {
        "path": str(root / "meta.jsonl"),
        "filename_column": "file",
        "caption_column": "text",
        "width_column": "w",
        "height_column": "h",
        "identifier_includes_extension": True,
    }
    entry = make_entry(
        tmp_path,
        instance_data_dir=str(root),
        metadata_backend="parquet",
        caption_strategy="parquet",
        parquet=block,
    )
    (row,) = discover(entry)
    assert row["meta_caption"] == "first\nsecond"  # a list cell: one caption per line
    assert (row["meta_width"], row["meta_height"]) == (64, 32)

    bad = make_entry(
        tmp_path,
        instance_data_dir=str(root),
        metadata_backend="parquet",
        caption_strategy="parquet",
        parquet={**block, "caption_column": "nope"},
    )
    with pytest.raises(DiscoveryError, match=r"dataset 'data'.*'nope'.*columns: file, h, text, w"):
        discover(bad)


def test_parquet_path_relative_to_working_directory(tmp_path, monkeypatch, example_dataset) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(example_dataset.metadata_parquet, work / "table.parquet")
    monkeypatch.chdir(work)
    entry = make_entry(
        tmp_path,
        instance_data_dir=str(example_dataset.images_dir),
        **parquet_fields("table.parquet"),
    )
    assert len(discover(entry)) == example_dataset.num_valid


# -- CSV lists ----------------------------------------------------------------------------------


def test_csv_local_paths(tmp_path, example_dataset) -> None:
    first, second = example_dataset.images[0], example_dataset.images[1]
    listing = tmp_path / "lists" / "images.csv"
    listing.parent.mkdir()
    shutil.copy(second.path, listing.parent / "copy.png")
    with listing.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "caption"])
        writer.writerow([str(first.path), "old caption"])
        writer.writerow(["copy.png", "relative to the csv folder"])
        writer.writerow([str(first.path), "new caption"])  # duplicate: the last line wins
        writer.writerow(["missing.png", ""])
    entry = make_entry(
        tmp_path,
        type="csv",
        csv_file=str(listing),
        csv_url_column="url",
        csv_caption_column="caption",
        caption_strategy="csv",
    )
    rows = by_id(discover(entry))
    assert set(rows) == {str(first.path), "copy.png", "missing.png"}
    assert rows[str(first.path)]["meta_caption"] == "new caption"
    assert rows["copy.png"]["uri"] == str(listing.parent / "copy.png")
    assert rows["copy.png"]["size_bytes"] == second.path.stat().st_size
    assert rows["missing.png"]["size_bytes"] is None
    assert rows["missing.png"]["meta_caption"] is None
    assert read_image_bytes(rows["copy.png"]) == second.path.read_bytes()


def test_csv_refuses_http_and_reports_missing_file(tmp_path) -> None:
    listing = tmp_path / "web.csv"
    listing.write_text("url,caption\nhttps://example.com/a.jpg,a\n")
    entry = make_entry(tmp_path, type="csv", csv_file=str(listing))
    with pytest.raises(DiscoveryError, match=r"dataset 'data'.*http URL"):
        discover(entry)
    listing.unlink()
    with pytest.raises(DatasetNotFoundError, match=r"dataset 'data'.*web\.csv"):
        discover(entry)


# -- S3 (moto server) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_dataset(s3_server, example_dataset) -> tuple[str, str]:
    """The example images under s3://<bucket>/train/images, its parquet at the bucket root."""
    bucket = s3_server.create_bucket()
    s3_server.upload_folder(example_dataset.images_dir, bucket, "train/images")
    s3_server.client().put_object(
        Bucket=bucket, Key="metadata.parquet", Body=example_dataset.metadata_parquet.read_bytes()
    )
    return bucket, "train/images"


def test_s3_discovery_matches_local(tmp_path, s3_server, s3_dataset, example_dataset) -> None:
    bucket, prefix = s3_dataset
    entry = make_entry(tmp_path, **s3_server.entry_fields(bucket, prefix))
    rows = by_id(discover(entry))
    assert set(rows) == all_image_ids(example_dataset)
    for image in example_dataset.images:
        row = rows[image.relpath]
        assert row["uri"] == f"s3://{bucket}/{prefix}/{image.relpath}"
        assert row["size_bytes"] == image.path.stat().st_size
        expected_caption = f"s3://{bucket}/{prefix}/{Path(image.relpath).with_suffix('.txt')}"
        assert row["caption_uri"] == (None if image.caption is None else expected_caption)
    image = example_dataset.images[0]
    data = read_image_bytes(rows[image.relpath], s3_server.settings())
    assert data == image.path.read_bytes()


def test_s3_credentials_from_environment(tmp_path, monkeypatch, s3_server, s3_dataset) -> None:
    """With no aws_* keys in the entry, discovery signs with AWS_ACCESS_KEY_ID from the
    environment: the server refuses every other key for the test."""
    bucket, prefix = s3_dataset
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    env_key = f"env-only-{uuid.uuid4().hex[:8]}"
    entry = make_entry(tmp_path, type="aws", aws_bucket_name=bucket, aws_data_prefix=prefix)
    with s3_server.requiring_key(env_key):
        with pytest.raises(DiscoveryError, match="cannot list"):
            discover(entry)  # still the default key in the environment: refused
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", env_key)
        assert len(discover(entry)) > 0


def test_s3_listing_is_one_request_per_page(tmp_path, s3_server) -> None:
    bucket = s3_server.create_bucket()
    client = s3_server.client()
    for i in range(50):
        client.put_object(Bucket=bucket, Key=f"set/part{i % 4}/img_{i:03d}.jpg", Body=b"x" * i)
        if i % 5 == 0:
            client.put_object(Bucket=bucket, Key=f"set/part{i % 4}/img_{i:03d}.txt", Body=b"c")
    entry = make_entry(tmp_path, **s3_server.entry_fields(bucket, "set"))
    s3_server.clear_requests()
    rows = discover(entry)
    requests = s3_server.snapshot()
    assert len(rows) == 50
    assert sum(r["caption_uri"] is not None for r in rows) == 10
    assert by_id(rows)["part3/img_007.jpg"]["size_bytes"] == 7
    # 60 objects fit one LIST page: one request in all, no HEAD/GET per object.
    assert [r.is_list for r in requests] == [True], requests
    assert not any(r.is_object_read for r in requests)


def test_s3_parquet_metadata(tmp_path, s3_server, s3_dataset, example_dataset) -> None:
    bucket, prefix = s3_dataset
    entry = make_entry(
        tmp_path, **s3_server.entry_fields(bucket, prefix), **parquet_fields("metadata.parquet")
    )
    s3_server.clear_requests()
    rows = by_id(discover(entry))
    assert set(rows) == {image.relpath for image in example_dataset.images}
    image = example_dataset.images[0]
    assert rows[image.relpath]["meta_caption"] == image.caption
    assert rows[image.relpath]["meta_width"] == image.width
    # The table is read once; images are never touched.
    reads = [r for r in s3_server.snapshot() if r.is_object_read]
    assert reads and all("metadata.parquet" in r.path for r in reads)


def test_s3_missing_bucket_and_prefix(tmp_path, s3_server, s3_dataset) -> None:
    bucket, _ = s3_dataset
    missing = make_entry(tmp_path, **s3_server.entry_fields("no-such-bucket-xyz", "x"))
    with pytest.raises(DatasetNotFoundError, match=r"dataset 'data'.*no-such-bucket-xyz"):
        discover(missing)
    empty = make_entry(tmp_path, **s3_server.entry_fields(bucket, "nothing/here"))
    with pytest.raises(DatasetNotFoundError, match=r"no objects under s3://.*/nothing/here"):
        discover(empty)


# -- Hugging Face datasets on disk --------------------------------------------------------------


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 8), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory) -> tuple[Path, Path, list[bytes]]:
    import datasets

    images = [_png((i * 50, 10, 200)) for i in range(4)]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            "meta": {"alt": datasets.Value("string")},
            "w": datasets.Value("int32"),
            "h": datasets.Value("int32"),
        }
    )
    data = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": b, "path": None} for b in images],
            "text": ["zero", None, "two", "three"],
            "meta": [{"alt": f"alt {i}"} for i in range(4)],
            "w": [12] * 4,
            "h": [8] * 4,
        },
        features=features,
    )
    root = tmp_path_factory.mktemp("hf")
    data.save_to_disk(str(root / "single"))
    datasets.DatasetDict({"train": data, "validation": data.select([3])}).save_to_disk(
        str(root / "splits")
    )
    return root / "single", root / "splits", images


def test_huggingface_saved_dataset(tmp_path, hf_folders) -> None:
    single, _, images = hf_folders
    entry = make_entry(
        tmp_path,
        type="huggingface",
        dataset_name=str(single),
        huggingface={
            "caption_column": "text",
            "fallback_caption_column": "meta.alt",
            "width_column": "w",
            "height_column": "h",
        },
    )
    rows = discover(entry)
    assert [r["image_id"] for r in rows] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert rows[0]["uri"].startswith(f"hf://{single}?") and rows[0]["uri"].endswith("#0")
    assert [r["meta_caption"] for r in rows] == ["zero", None, "two", "three"]
    assert rows[1]["meta_fallback_caption"] == "alt 1"
    assert (rows[2]["meta_width"], rows[2]["meta_height"]) == (12, 8)
    assert [read_image_bytes(r) for r in rows] == images


def test_huggingface_dataset_dict_split(tmp_path, hf_folders) -> None:
    _, splits, images = hf_folders
    entry = make_entry(
        tmp_path,
        type="huggingface",
        dataset_name=str(splits),
        split="validation",
        caption_column="text",
    )
    (row,) = discover(entry)
    assert row["meta_caption"] == "three"
    assert read_image_bytes(row) == images[3]
    wrong = make_entry(tmp_path, type="huggingface", dataset_name=str(splits), split="nope")
    with pytest.raises(DiscoveryError, match=r"dataset 'data'.*split 'nope'.*train, validation"):
        discover(wrong)


def test_huggingface_parquet_folder_and_missing(tmp_path, monkeypatch, hf_folders) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    single, _, images = hf_folders
    folder = tmp_path / "repo"
    folder.mkdir()
    datasets.load_from_disk(str(single)).to_parquet(str(folder / "train.parquet"))
    entry = make_entry(tmp_path, type="huggingface", dataset_name=str(folder))
    rows = discover(entry)
    assert len(rows) == 4
    assert read_image_bytes(rows[1]) == images[1]

    gone = make_entry(tmp_path, type="huggingface", dataset_name="someone/not-on-disk")
    with pytest.raises(DatasetNotFoundError, match=r"dataset 'data'.*not a folder on disk"):
        discover(gone)


def test_parse_hf_uri_round_trip(tmp_path) -> None:
    folder = tmp_path / "with space#and?odd"
    uri = f"hf://{quote(str(folder))}?split=train&column=img#7"
    assert discovery.parse_hf_uri(uri) == (str(folder), "train", "img", 7)

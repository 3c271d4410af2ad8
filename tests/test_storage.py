"""Tests for st_ray.storage: URIs to filesystems, S3 settings, atomic writes (local and S3)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from st_ray import storage
from st_ray.storage import S3Settings


def test_settings_repr_hides_credentials() -> None:
    settings = S3Settings(
        endpoint_url="http://127.0.0.1:9000",
        region="eu-west-1",
        key="AKIAEXAMPLEKEY",
        secret="very-secret",
        session_token="token-value",
    )
    text = repr(settings)
    assert "127.0.0.1:9000" in text and "eu-west-1" in text
    for secret in ("AKIAEXAMPLEKEY", "very-secret", "token-value"):
        assert secret not in text


def test_settings_from_entry_fields_then_environment() -> None:
    fields = {
        "aws_endpoint_url": "http://minio:9000",
        "aws_region_name": None,
        "aws_access_key_id": "entry-key",
        "aws_secret_access_key": None,
        "aws_session_token": None,
        "aws_max_pool_connections": 16,
    }
    env = {
        "AWS_ACCESS_KEY_ID": "env-key",
        "AWS_SECRET_ACCESS_KEY": "env-secret",
        "AWS_DEFAULT_REGION": "eu-central-1",
        "AWS_SESSION_TOKEN": "env-token",
    }
    settings = S3Settings.from_entry(fields, env)
    assert settings.endpoint_url == "http://minio:9000"
    assert settings.key == "entry-key"  # the entry wins
    assert settings.secret == "env-secret"  # the environment fills the gaps
    assert settings.region == "eu-central-1"
    assert settings.session_token == "env-token"
    assert settings.max_pool_connections == 16
    assert S3Settings.from_entry({}, {}) == S3Settings()


def test_settings_from_options() -> None:
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-west-2"}
    settings = S3Settings.from_options({"s3_endpoint_url": "http://store:9000"}, env)
    assert (settings.endpoint_url, settings.key, settings.secret, settings.region) == (
        "http://store:9000",
        "k",
        "s",
        "us-west-2",
    )
    assert S3Settings.from_options({}, {"AWS_ENDPOINT_URL": "http://x:1"}).endpoint_url == (
        "http://x:1"
    )


def test_uri_helpers(tmp_path) -> None:
    assert storage.is_remote("s3://bucket/key")
    assert not storage.is_remote("/data/images")
    assert not storage.is_remote("relative/images")
    assert not storage.is_remote("file:///data/images")
    assert storage.join("s3://bucket/prefix/", "a/", "/b.txt") == "s3://bucket/prefix/a/b.txt"
    assert storage.join("s3://bucket") == "s3://bucket"
    assert storage.join(str(tmp_path), "a", "b.txt") == os.path.join(str(tmp_path), "a", "b.txt")
    assert storage.split_s3("s3://bucket/a/b") == ("bucket", "a/b")
    with pytest.raises(ValueError):
        storage.split_s3("/local/path")


def test_local_filesystems(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    fs, path = storage.filesystem("sub/file.bin")
    assert isinstance(fs, LocalFileSystem)
    assert path == str(tmp_path / "sub" / "file.bin")
    assert storage.filesystem(f"file://{tmp_path}/x")[1] == str(tmp_path / "x")
    arrow_fs, arrow_path = storage.pyarrow_filesystem("sub")
    assert isinstance(arrow_fs, pafs.LocalFileSystem)
    assert arrow_path == str(tmp_path / "sub")


def test_atomic_write_local(tmp_path) -> None:
    target = tmp_path / "deep" / "manifest.json"
    storage.atomic_write_bytes(str(target), b"one")
    storage.atomic_write_bytes(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["manifest.json"]  # no temporary file left behind
    assert storage.read_bytes(str(target)) == b"two"
    assert storage.exists(str(target)) and not storage.exists(str(tmp_path / "missing"))


def test_s3_filesystem_uses_custom_endpoint(s3_server) -> None:
    bucket = s3_server.create_bucket()
    settings = s3_server.settings()
    fs, path = storage.filesystem(f"s3://{bucket}/dir/file.txt", settings)
    assert path == f"{bucket}/dir/file.txt"
    assert fs.client_kwargs["endpoint_url"] == s3_server.endpoint_url
    fs.pipe_file(path, b"hello")
    assert storage.read_bytes(f"s3://{bucket}/dir/file.txt", settings) == b"hello"
    assert storage.exists(f"s3://{bucket}/dir/file.txt", settings)


def test_atomic_write_s3_is_one_put(s3_server) -> None:
    bucket = s3_server.create_bucket()
    uri = storage.join(f"s3://{bucket}", "cache", "manifest.json")
    settings = s3_server.settings()
    storage.atomic_write_bytes(uri, b"first", settings)
    s3_server.clear_requests()
    storage.atomic_write_bytes(uri, b"second", settings)
    writes = [r for r in s3_server.snapshot() if r.method in ("PUT", "POST")]
    assert len(writes) == 1
    assert storage.read_bytes(uri, settings) == b"second"


def test_pyarrow_filesystem_parquet_round_trip_on_s3(s3_server) -> None:
    bucket = s3_server.create_bucket()
    uri = f"s3://{bucket}/tables/part-0.parquet"
    fs, path = storage.pyarrow_filesystem(uri, s3_server.settings())
    assert isinstance(fs, pafs.S3FileSystem)
    table = pa.table({"image_id": ["a.png", "b.jpg"], "width": [640, 1024]})
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)
    # The object is visible through the fsspec view of the same bucket too.
    fsspec_fs, fsspec_path = storage.filesystem(uri, s3_server.settings())
    assert fsspec_fs.size(fsspec_path) > 0

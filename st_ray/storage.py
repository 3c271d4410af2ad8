"""Turning URIs (local paths, ``file://`` and ``s3://``) into filesystems, in one place.

Everything that reads or writes datasets, caches and run outputs goes through here, so a
custom S3 endpoint (MinIO, R2, a test server) and its credentials are set up the same way
everywhere. Credentials live only in ``S3Settings``; its repr hides them and nothing here
logs them.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

S3_SCHEME = "s3"
# Region for custom endpoints that name none: such stores ignore it, but requests are signed
# with one.
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3 bucket. Unset fields fall back to the usual AWS credential chain."""

    endpoint_url: str | None = None
    region: str | None = None
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    max_pool_connections: int | None = None

    @classmethod
    def from_entry(cls, entry: Any, environ: Mapping[str, str] | None = None) -> S3Settings:
        """Settings of a dataset entry's ``aws_*`` fields, else the standard AWS variables."""
        env = os.environ if environ is None else environ
        fields = entry.fields if hasattr(entry, "fields") else entry

        def pick(name: str, *variables: str) -> str | None:
            value = fields.get(name)
            if value:
                return str(value)
            return next((env[v] for v in variables if env.get(v)), None)

        pool = fields.get("aws_max_pool_connections")
        return cls(
            endpoint_url=pick("aws_endpoint_url", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            region=pick("aws_region_name", "AWS_REGION", "AWS_DEFAULT_REGION"),
            key=pick("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
            secret=pick("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
            session_token=pick("aws_session_token", "AWS_SESSION_TOKEN"),
            max_pool_connections=int(pool) if pool else None,
        )

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> S3Settings:
        """Settings for run storage and caches: the run option ``s3_endpoint_url`` plus the
        standard AWS variables for region and credentials."""
        env = os.environ if environ is None else environ
        pool = options.get("aws_max_pool_connections")
        return cls(
            endpoint_url=options.get("s3_endpoint_url")
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            max_pool_connections=int(pool) if pool else None,
        )


def scheme(uri: str) -> str:
    """The URI's scheme, lower case; "" for plain local paths (and Windows drive letters)."""
    parts = urlsplit(str(uri))
    return parts.scheme.lower() if len(parts.scheme) > 1 else ""


def is_remote(uri: str) -> bool:
    """True for anything that is not on the local disk (``s3://`` and other schemes)."""
    return scheme(uri) not in ("", "file")


def local_path(uri: str | Path) -> str:
    """An absolute local path for a plain path or ``file://`` URI."""
    text = str(uri)
    if scheme(text) == "file":
        text = urlsplit(text).path
    return os.path.abspath(os.path.expanduser(text))


def join(uri: str, *parts: str) -> str:
    """``uri`` with path parts appended: "/" separators for remote URIs, os paths locally."""
    clean = [str(p).strip("/") for p in parts if p not in (None, "")]
    if is_remote(uri):
        return posixpath.join(str(uri).rstrip("/"), *clean) if clean else str(uri)
    return os.path.join(str(uri), *clean)


def split_s3(uri: str) -> tuple[str, str]:
    """("bucket", "key/inside") of an ``s3://bucket/key/inside`` URI."""
    parts = urlsplit(str(uri))
    if parts.scheme.lower() != S3_SCHEME or not parts.netloc:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")


def filesystem(uri: str, s3: S3Settings | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """An fsspec filesystem for ``uri`` and the path of ``uri`` inside it.

    ``s3`` configures ``s3://`` URIs (unset: the default AWS chain); other schemes go to
    fsspec as they are.
    """
    kind = scheme(uri)
    if kind in ("", "file"):
        return LocalFileSystem(), local_path(uri)
    if kind == S3_SCHEME:
        bucket, key = split_s3(uri)
        return _s3fs(s3 or S3Settings()), f"{bucket}/{key}".rstrip("/")
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


def _s3fs(s3: S3Settings) -> fsspec.AbstractFileSystem:
    import s3fs

    client_kwargs: dict[str, Any] = {}
    if s3.endpoint_url:
        client_kwargs["endpoint_url"] = s3.endpoint_url
    region = _region(s3)
    if region:
        client_kwargs["region_name"] = region
    config_kwargs: dict[str, Any] = {}
    if s3.max_pool_connections:
        config_kwargs["max_pool_connections"] = s3.max_pool_connections
    # fsspec caches instances by these arguments, so every caller with the same settings
    # shares one client (and its connection pool) per process.
    return s3fs.S3FileSystem(
        key=s3.key,
        secret=s3.secret,
        token=s3.session_token,
        client_kwargs=client_kwargs,
        config_kwargs=config_kwargs,
    )


def _region(s3: S3Settings) -> str | None:
    # On AWS an unset region lets the SDK find the bucket's; custom endpoints still need one
    # for request signing.
    return s3.region or (DEFAULT_REGION if s3.endpoint_url else None)


def pyarrow_filesystem(uri: str, s3: S3Settings | None = None) -> tuple[pafs.FileSystem, str]:
    """A ``pyarrow.fs.FileSystem`` for ``uri`` and the path inside it, for Ray Data's
    ``read_parquet``/``write_parquet(filesystem=...)`` and pyarrow.parquet.

    S3 uses pyarrow's native client (``endpoint_override`` for custom endpoints); other
    remote schemes are wrapped from fsspec.
    """
    kind = scheme(uri)
    if kind in ("", "file"):
        return pafs.LocalFileSystem(), local_path(uri)
    if kind == S3_SCHEME:
        bucket, key = split_s3(uri)
        settings = s3 or S3Settings()
        kwargs: dict[str, Any] = {}
        region = _region(settings)
        if region:
            kwargs["region"] = region
        if settings.endpoint_url:
            # pyarrow takes "http://host:port" here and picks the scheme from it.
            kwargs["endpoint_override"] = settings.endpoint_url
        if settings.key and settings.secret:
            kwargs.update(access_key=settings.key, secret_key=settings.secret)
            if settings.session_token:
                kwargs["session_token"] = settings.session_token
        return pafs.S3FileSystem(**kwargs), f"{bucket}/{key}".rstrip("/")
    fs, path = filesystem(uri, s3)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def read_bytes(uri: str, s3: S3Settings | None = None) -> bytes:
    """The whole content of ``uri`` (one GET on S3)."""
    fs, path = filesystem(uri, s3)
    return fs.cat_file(path)


def exists(uri: str, s3: S3Settings | None = None) -> bool:
    fs, path = filesystem(uri, s3)
    return bool(fs.exists(path))


def atomic_write_bytes(uri: str, data: bytes, s3: S3Settings | None = None) -> None:
    """Write ``data`` so readers see the old content or the new, never a partial file.

    Locally: a temporary file in the same folder, then ``os.replace``. On S3 a single PUT
    (or a multipart upload, for huge data) only becomes visible once complete.
    """
    if is_remote(uri):
        fs, path = filesystem(uri, s3)
        fs.pipe_file(path, data)
        return
    target = local_path(uri)
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise

"""A real S3-compatible server for tests: moto's server on a free 127.0.0.1 port.

The session-scoped ``s3_server`` fixture runs moto's WSGI app in a thread of the test process
and records every HTTP request it serves, so tests can assert how many requests an operation
made (e.g. that discovery lists a prefix without touching each object). Clients in other
processes (Ray workers) reach it over HTTP like any S3 endpoint. Credentials are dummies.
"""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REGION = "us-east-1"
ACCESS_KEY = "testing-key"
SECRET_KEY = "testing-secret"


@dataclass(frozen=True)
class Request:
    """One HTTP request the server answered."""

    method: str
    path: str  # "/bucket" or "/bucket/key..."
    query: str

    @property
    def is_list(self) -> bool:
        # ListObjects(V2) is a GET on the bucket itself.
        return self.method == "GET" and self.path.strip("/").count("/") == 0

    @property
    def is_object_read(self) -> bool:
        return self.method in ("GET", "HEAD") and self.path.strip("/").count("/") >= 1


@dataclass
class S3TestServer:
    endpoint_url: str
    region: str = REGION
    key: str = ACCESS_KEY
    secret: str = SECRET_KEY
    requests: list[Request] = field(default_factory=list)
    # When set, requests signed with any other access key id are refused (403), as real S3
    # refuses an unknown key; moto itself accepts any key.
    required_key: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextlib.contextmanager
    def requiring_key(self, key: str) -> Iterator[None]:
        """For the block, answer only requests signed with access key id ``key``."""
        self.required_key = key
        try:
            yield
        finally:
            self.required_key = None

    # -- settings for the code under test ------------------------------------------------------
    def settings(self) -> Any:
        from st_ray.storage import S3Settings

        return S3Settings(
            endpoint_url=self.endpoint_url, region=self.region, key=self.key, secret=self.secret
        )

    def entry_fields(self, bucket: str, prefix: str = "") -> dict[str, Any]:
        """The ``aws_*`` fields of a multidatabackend.json entry for ``bucket``/``prefix``."""
        return {
            "type": "aws",
            "aws_bucket_name": bucket,
            "aws_data_prefix": prefix,
            "aws_endpoint_url": self.endpoint_url,
            "aws_region_name": self.region,
            "aws_access_key_id": self.key,
            "aws_secret_access_key": self.secret,
        }

    def env(self) -> dict[str, str]:
        """Standard AWS variables pointing at this server (for monkeypatch.setenv)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
        )

    # -- data ----------------------------------------------------------------------------------
    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload_folder(self, folder: str | Path, bucket: str, prefix: str = "") -> list[str]:
        """Upload every file under ``folder`` to ``bucket``/``prefix``; returns the keys."""
        client = self.client()
        root = Path(folder)
        keys = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = "/".join(p for p in (prefix.strip("/"), path.relative_to(root).as_posix()) if p)
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            keys.append(key)
        return keys

    # -- request log ---------------------------------------------------------------------------
    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def snapshot(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def _record(self, environ: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(
                Request(
                    environ["REQUEST_METHOD"],
                    environ.get("PATH_INFO", ""),
                    environ.get("QUERY_STRING", ""),
                )
            )


def signing_key(environ: dict[str, Any]) -> str | None:
    """The access key id a request was signed with (SigV4 header or presigned query)."""
    found = re.search(
        r"Credential=([^/]+)/",
        environ.get("HTTP_AUTHORIZATION", "")
        or environ.get("QUERY_STRING", "").replace("X-Amz-Credential=", "Credential="),
    )
    return found.group(1) if found else None


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class QuietHandler(MotoRequestHandler):
        def log(self, *args: Any, **kwargs: Any) -> None:  # no per-request lines in test output
            pass

    app = DomainDispatcherApplication(create_backend_app)
    server_state: dict[str, S3TestServer] = {}

    def recording_app(environ: dict[str, Any], start_response: Any) -> Any:
        server = server_state["server"]
        server._record(environ)
        if server.required_key and signing_key(environ) != server.required_key:
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [b"<Error><Code>InvalidAccessKeyId</Code><Message>unknown key</Message></Error>"]
        return app(environ, start_response)

    # Port 0: the OS picks a free port; only the loopback interface is bound.
    httpd = make_server("127.0.0.1", 0, recording_app, threaded=True, request_handler=QuietHandler)
    host, port = httpd.server_address[:2]
    server = S3TestServer(endpoint_url=f"http://{host}:{port}")
    server_state["server"] = server
    thread = threading.Thread(target=httpd.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)

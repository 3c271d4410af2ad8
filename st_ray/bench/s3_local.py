"""An in-process S3-compatible server (moto) for benchmarks, counting the bytes it serves.

moto keeps objects in this process's memory, so benchmarks on it use small payloads.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from st_ray.storage import S3Settings

KEY, SECRET, REGION = "bench-key", "bench-secret", "us-east-1"


@dataclass
class LocalS3:
    endpoint_url: str
    bytes_sent: int = 0  # body bytes of every response (GET payloads)
    gets: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def settings(self) -> S3Settings:
        return S3Settings(endpoint_url=self.endpoint_url, region=REGION, key=KEY, secret=SECRET)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": REGION,
        }

    def create_bucket(self) -> str:
        import boto3

        name = f"bench-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        ).create_bucket(Bucket=name)
        return name

    def _count(self, method: str, chunks: Any) -> Iterator[bytes]:
        for chunk in chunks:
            if method == "GET":
                with self._lock:
                    self.bytes_sent += len(chunk)
            yield chunk


@contextmanager
def local_s3() -> Iterator[LocalS3]:
    """A moto server on a free loopback port for the ``with`` block."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Quiet(MotoRequestHandler):
        def log(self, *args: Any, **kwargs: Any) -> None:
            pass

    app = DomainDispatcherApplication(create_backend_app)
    state: dict[str, LocalS3] = {}

    def counting(environ: dict[str, Any], start_response: Any) -> Any:
        server = state["server"]
        method = environ["REQUEST_METHOD"]
        if method == "GET":
            with server._lock:
                server.gets += 1
        return server._count(method, app(environ, start_response))

    httpd = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=Quiet)
    host, port = httpd.server_address[:2]
    state["server"] = LocalS3(endpoint_url=f"http://{host}:{port}")
    thread = threading.Thread(target=httpd.serve_forever, name="bench-s3", daemon=True)
    thread.start()
    try:
        yield state["server"]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)

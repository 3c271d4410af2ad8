"""A real Azure Blob Storage-compatible HTTP server on 127.0.0.1 for tests (no network here).

It answers the Blob REST calls ``azure-storage-blob`` makes for ``create_container`` and
``upload_blob``: Create Container (``PUT /<account>/<container>?restype=container``; 409
``ContainerAlreadyExists`` the second time), Put Blob (``PUT /<account>/<container>/<blob>``),
and, for files above the client's ``max_single_put_size``, Put Block (``?comp=block``) and Put
Block List (``?comp=blocklist``). It keeps every blob's bytes and records each request with
whether it carried an ``Authorization`` header (any shared-key signature is accepted: it checks
presence, not the HMAC). ``fail`` answers the next requests with an error status. The SDK is
pointed at it the Azurite way: ``BlobEndpoint=http://127.0.0.1:<port>/devstoreaccount1``.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

ACCOUNT = "devstoreaccount1"
# Azurite's published development key (not a secret): the SDK signs requests with it.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass
class BlobTestServer:
    url: str = ""  # the account's blob endpoint: http://127.0.0.1:<port>/devstoreaccount1
    containers: dict[str, dict[str, bytes]] = field(default_factory=dict)
    content_types: dict[str, str] = field(default_factory=dict)  # "container/blob" -> type
    # (method, operation, container/blob path, carried an Authorization header)
    requests: list[tuple[str, str, str, bool]] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)  # [remaining, status]
    blocks: dict[str, dict[str, bytes]] = field(default_factory=dict, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def connection_string(self, key: str = ACCOUNT_KEY) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
            f"BlobEndpoint={self.url};"
        )

    def fail(self, times: int, status: int) -> None:
        with self.lock:
            self.failures[:] = [times, status]

    def operations(self) -> list[str]:
        with self.lock:
            return [r[1] for r in self.requests]

    def _failure(self) -> int | None:
        with self.lock:
            if not self.failures or self.failures[0] == 0:
                return None
            self.failures[0] -= 1
            return self.failures[1]


def _handler(server: BlobTestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet test output
            pass

        def _send(self, status: int, headers: dict[str, str] | None = None, body: bytes = b""):
            self.send_response(status)
            for name, value in {
                "x-ms-request-id": "00000000-0000-0000-0000-000000000000",
                "x-ms-version": self.headers.get("x-ms-version", "2025-01-05"),
                "Date": formatdate(usegmt=True),
                "Content-Length": str(len(body)),
                **(headers or {}),
            }.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str) -> None:
            body = (
                f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                f"<Message>{code}</Message></Error>"
            ).encode()
            self._send(status, {"x-ms-error-code": code, "Content-Type": "application/xml"}, body)

        def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            account, _, rest = unquote(parts.path).lstrip("/").partition("/")
            container, _, blob = rest.partition("/")
            if query.get("restype") == "container":
                operation = "create-container"
            else:
                operation = {"block": "put-block", "blocklist": "put-block-list"}.get(
                    query.get("comp", ""), "put-blob"
                )
            with server.lock:
                server.requests.append(
                    ("PUT", operation, rest, bool(self.headers.get("Authorization")))
                )
            status = server._failure()
            if status is not None:
                return self._error(
                    status, "ServerBusy" if status >= 500 else "AuthorizationFailure"
                )
            if account != ACCOUNT:
                return self._error(404, "ResourceNotFound")
            stored = {"ETag": '"0x8D0000000000001"', "Last-Modified": formatdate(usegmt=True)}
            with server.lock:
                if operation == "create-container":
                    if container in server.containers:
                        return self._error(409, "ContainerAlreadyExists")
                    server.containers[container] = {}
                    return self._send(201, stored)
                if container not in server.containers:
                    return self._error(404, "ContainerNotFound")
                if operation == "put-block":
                    server.blocks.setdefault(rest, {})[query["blockid"]] = body
                    return self._send(201)
                if operation == "put-block-list":
                    staged = server.blocks.pop(rest, {})
                    ids = [e.text or "" for e in ET.fromstring(body)]
                    body = b"".join(staged[i] for i in ids)
                server.containers[container][blob] = body
                kind = self.headers.get("x-ms-blob-content-type")
                if kind:
                    server.content_types[rest] = kind
            self._send(201, stored)

    return Handler


@pytest.fixture
def blob_server() -> Iterator[BlobTestServer]:
    """A fresh loopback Blob service per test."""
    state = BlobTestServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/{ACCOUNT}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

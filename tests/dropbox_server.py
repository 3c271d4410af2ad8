"""A real Dropbox API-compatible HTTP server on 127.0.0.1 for tests (no network here).

It answers the routes the ``dropbox`` SDK calls to upload: ``/2/files/upload``,
``/2/files/upload_session/start``, ``/append_v2`` and ``/finish`` (content host), and
``/oauth2/token`` (a refresh-token grant, api host). It checks the bearer token, the
``content_hash`` the SDK computes for each request body and each session's offsets, keeps every
file's bytes and records each request (route, Dropbox path, the token it carried).

The SDK builds ``https://api.dropboxapi.com/...`` and ``https://content.dropboxapi.com/...``
URLs with no way to change scheme or host but import-time environment variables. It does take
a ``requests.Session`` (its public ``session`` argument): ``session()`` returns one whose
transport adapter sends those two hosts' requests, unchanged but for the URL's scheme and host,
to this server over plain HTTP. Everything the SDK builds (routes, headers, JSON arguments,
bodies, hashes, token refresh) travels over a real socket and is checked here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

HOSTS = ("https://api.dropboxapi.com", "https://content.dropboxapi.com")
ACCESS_TOKEN = "sl.loopback-access-token-0123456789"
REFRESHED_TOKEN = "sl.loopback-refreshed-token-9876543210"
REFRESH_TOKEN = "loopback-refresh-token-abcdef"
APP_KEY = "loopbackappkey"
APP_SECRET = "loopback-app-secret-xyz"


@dataclass
class DropboxTestServer:
    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # Dropbox path -> bytes
    # (route, Dropbox path or session id, bearer token or the grant)
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)  # [remaining, status] for uploads
    sessions: dict[str, bytearray] = field(default_factory=dict, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fail(self, times: int, status: int) -> None:
        with self.lock:
            self.failures[:] = [times, status]

    def routes(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.requests]

    def session(self) -> requests.Session:
        """A requests session whose Dropbox hosts resolve to this server."""
        session = requests.Session()
        session.mount("https://", _Loopback(self.url))
        return session

    def _failure(self) -> int | None:
        with self.lock:
            if not self.failures or self.failures[0] == 0:
                return None
            self.failures[0] -= 1
            return self.failures[1]


class _Loopback(HTTPAdapter):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        for host in HOSTS:
            if request.url and request.url.startswith(host + "/"):
                request.url = self.url + request.url[len(host) :]
                return super().send(request, **kwargs)
        raise requests.ConnectionError(f"not a Dropbox host: {request.url}")


def content_hash(data: bytes) -> str:
    """Dropbox's content hash of ``data`` (imported late: the SDK takes a second to import)."""
    from dropbox.content_hash import content_hash as dropbox_hash

    return dropbox_hash(data)


def _metadata(path: str, data: bytes) -> dict[str, Any]:
    return {
        "name": path.rsplit("/", 1)[-1],
        "id": "id:loopback" + str(len(path)),
        "client_modified": "2026-01-01T00:00:00Z",
        "server_modified": "2026-01-01T00:00:00Z",
        "rev": "0123456789abcdef",
        "size": len(data),
        "path_lower": path.lower(),
        "path_display": path,
        "content_hash": content_hash(data),
    }


def _handler(server: DropboxTestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet test output
            pass

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            route = self.path.split("?", 1)[0]
            if route == "/oauth2/token":
                return self._token(body.decode())
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            arg = json.loads(self.headers.get("Dropbox-API-Arg") or "{}")
            where = arg.get("path") or arg.get("commit", {}).get("path") or ""
            with server.lock:
                server.requests.append((route, where, token))
            if token not in (ACCESS_TOKEN, REFRESHED_TOKEN):
                return self._send(401, {"error": {".tag": "invalid_access_token"}})
            status = server._failure()
            if status is not None:
                return self._send(status, {"error_summary": "test failure"})
            if arg.get("content_hash") not in (None, content_hash(body)):
                return self._send(400, {"error_summary": "content_hash_mismatch"})
            with server.lock:
                self._route(route, arg, body)

        def _route(self, route: str, arg: dict[str, Any], body: bytes) -> None:
            if route == "/2/files/upload":
                server.files[arg["path"]] = body
                return self._send(200, _metadata(arg["path"], body))
            if route == "/2/files/upload_session/start":
                session_id = f"session-{len(server.sessions)}"
                server.sessions[session_id] = bytearray(body)
                return self._send(200, {"session_id": session_id})
            cursor = arg.get("cursor", {})
            data = server.sessions.get(cursor.get("session_id"))
            if data is None or cursor.get("offset") != len(data):
                return self._send(409, {"error_summary": "lookup_failed/incorrect_offset/"})
            data += body
            if route == "/2/files/upload_session/append_v2":
                return self._send(200, None)
            if route == "/2/files/upload_session/finish":
                path = arg["commit"]["path"]
                server.files[path] = bytes(server.sessions.pop(cursor["session_id"]))
                return self._send(200, _metadata(path, server.files[path]))
            self._send(400, {"error_summary": f"route not served by the test server: {route}"})

        def _token(self, form: str) -> None:
            from urllib.parse import parse_qs

            fields = {k: v[0] for k, v in parse_qs(form).items()}
            with server.lock:
                server.requests.append(("/oauth2/token", "", fields.get("grant_type", "")))
            expected = {
                "grant_type": "refresh_token",
                "refresh_token": REFRESH_TOKEN,
                "client_id": APP_KEY,
                "client_secret": APP_SECRET,
            }
            if fields != expected:
                return self._send(400, {"error": "invalid_grant"})
            self._send(200, {"access_token": REFRESHED_TOKEN, "expires_in": 14400})

    return Handler


@pytest.fixture
def dropbox_server() -> Iterator[DropboxTestServer]:
    """A fresh loopback Dropbox API per test."""
    state = DropboxTestServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

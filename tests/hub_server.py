"""A real Hugging Face Hub-compatible HTTP server on 127.0.0.1 for tests (no network here).

It implements the few endpoints ``huggingface_hub.HfApi`` calls for ``create_repo`` and
``upload_folder``: ``POST /api/repos/create``, ``POST /api/validate-yaml`` (a README.md's
metadata), ``POST /api/models/<repo>/preupload/<rev>`` and
``POST /api/models/<repo>/commit/<rev>`` (the NDJSON commit). Its preupload answer asks for every
file as a "regular" upload (content inside the commit), so no LFS or Xet storage is involved;
the Hub itself makes that choice per file. It keeps each repo's files and commits, records every
request (with the token it carried) and can answer a number of requests to an endpoint with an
error (``fail``), to test retries and final failures. Point ``HF_ENDPOINT`` at ``url``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

TOKEN = "hf_loopbacktesttoken123"


@dataclass
class Commit:
    summary: str
    files: dict[str, bytes]
    oid: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)


@dataclass
class HubTestServer:
    url: str = ""
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, auth
    # endpoint kind ("create", "preupload", "commit") -> [remaining answers, status]
    failures: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fail(self, kind: str, times: int, status: int = 503) -> None:
        """Answer the next ``times`` requests of ``kind`` with ``status`` (-1 times: always)."""
        with self.lock:
            self.failures[kind] = [times, status]

    def reset(self) -> None:
        with self.lock:
            self.repos.clear()
            self.requests.clear()
            self.failures.clear()

    def requests_to(self, kind: str) -> list[tuple[str, str, str]]:
        with self.lock:
            return [r for r in self.requests if _kind(r[1]) == kind]

    def _failure(self, kind: str) -> int | None:
        with self.lock:
            plan = self.failures.get(kind)
            if not plan or plan[0] == 0:
                return None
            if plan[0] > 0:
                plan[0] -= 1
            return plan[1]


def _kind(path: str) -> str:
    if path.startswith("/api/repos/create"):
        return "create"
    if path.startswith("/api/validate-yaml"):
        return "validate-yaml"
    if "/preupload/" in path:
        return "preupload"
    if "/commit/" in path:
        return "commit"
    return "other"


def _repo_id(path: str, marker: str) -> str:
    # /api/models/<namespace>/<name>/<marker>/<revision>
    return path.split("/api/models/", 1)[1].split(f"/{marker}/", 1)[0]


def _handler(hub: HubTestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet test output
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._body()
            self._send(404, {"error": f"not served by the test Hub: GET {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            body = self._body()
            path = self.path.split("?", 1)[0]
            kind = _kind(path)
            with hub.lock:
                hub.requests.append(("POST", path, self.headers.get("Authorization", "")))
            status = hub._failure(kind)
            if status is not None:
                self._send(status, {"error": f"test Hub answers {status} to {kind}"})
            elif self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._send(401, {"error": "Invalid credentials in Authorization header"})
            elif kind == "create":
                self._create(json.loads(body))
            elif kind == "validate-yaml":
                self._validate_yaml(json.loads(body)["content"])
            elif kind == "preupload":
                self._preupload(_repo_id(path, "preupload"), json.loads(body))
            elif kind == "commit":
                self._commit(_repo_id(path, "commit"), body)
            else:
                self._send(404, {"error": f"not served by the test Hub: POST {path}"})

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _create(self, payload: dict[str, Any]) -> None:
            repo_id = f"{payload.get('organization') or 'loopback-user'}/{payload['name']}"
            url = f"{hub.url}/{repo_id}"
            with hub.lock:
                if repo_id in hub.repos:
                    self._send(409, {"error": "You already created this model repo", "url": url})
                    return
                private = payload.get("visibility", "public") != "public"
                hub.repos[repo_id] = Repo(repo_id, private=private)
            self._send(200, {"url": url, "name": repo_id})

        def _validate_yaml(self, content: str) -> None:
            # The model card's metadata block must be a YAML mapping, as the Hub requires.
            import yaml

            errors = []
            if content.startswith("---"):
                block = content.split("---", 2)[1]
                try:
                    if not isinstance(yaml.safe_load(block) or {}, dict):
                        errors.append({"message": "metadata is not a mapping"})
                except yaml.YAMLError as err:
                    errors.append({"message": f"invalid YAML: {err}"})
            self._send(400 if errors else 200, {"errors": errors, "warnings": []})

        def _preupload(self, repo_id: str, payload: dict[str, Any]) -> None:
            if repo_id not in hub.repos:
                self._send(404, {"error": f"Repository {repo_id} not found"})
                return
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                for f in payload["files"]
            ]
            self._send(200, {"files": files, "commitOid": None})

        def _commit(self, repo_id: str, body: bytes) -> None:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            files = {
                x["value"]["path"]: base64.b64decode(x["value"]["content"])
                for x in lines
                if x["key"] == "file"
            }
            with hub.lock:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._send(404, {"error": f"Repository {repo_id} not found"})
                    return
                oid = hashlib.sha1(body).hexdigest()
                repo.files.update(files)
                repo.commits.append(Commit(header["summary"], files, oid))
            self._send(
                200,
                {
                    "commitUrl": f"{hub.url}/{repo_id}/commit/{oid}",
                    "commitOid": oid,
                    "pullRequestUrl": None,
                },
            )

    return Handler


@pytest.fixture(scope="session")
def hub_server_session() -> Iterator[HubTestServer]:
    hub = HubTestServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    httpd.daemon_threads = True
    host, port = httpd.server_address[:2]
    hub.url = f"http://{host}:{port}"
    thread = threading.Thread(target=httpd.serve_forever, name="hub-test-server", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def hub_server(hub_server_session: HubTestServer, monkeypatch: pytest.MonkeyPatch) -> HubTestServer:
    """The loopback Hub, emptied, with HF_ENDPOINT and HF_TOKEN pointing at it. The suite runs
    with HF_HUB_OFFLINE=1 (tests/conftest.py); this loopback server is the one Hub allowed."""
    import huggingface_hub.constants

    hub_server_session.reset()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", hub_server_session.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub_server_session

"""Hub pushes against the loopback Hub server (tests/hub_server.py): real HTTP, real HfApi."""

from __future__ import annotations

from pathlib import Path

import pytest

from st_ray.publish.hub import HubRepo, PublishError
from st_ray.publish.retry import Backoff
from tests.hub_server import TOKEN, HubTestServer

FAST = Backoff(attempts=3, first_wait_s=0.01)


def _folder(root: Path) -> Path:
    folder = root / "out"
    (folder / "images").mkdir(parents=True)
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"\x00weights" * 100)
    (folder / "README.md").write_text("# card\n")
    (folder / "images" / "step_2.png").write_bytes(b"\x89PNG fake bytes")
    return folder


def test_push_creates_the_repo_and_commits_every_file(hub_server: HubTestServer, tmp_path):
    folder = _folder(tmp_path)
    repo = HubRepo.from_options({"hub_model_id": "me/tiny-lora", "model_card_private": True})
    url = repo.push_folder(folder, message="final model", backoff=FAST)

    assert url == f"{hub_server.url}/me/tiny-lora"
    stored = hub_server.repos["me/tiny-lora"]
    assert stored.private is True
    assert [c.summary for c in stored.commits] == ["final model"]
    assert stored.files == {
        "pytorch_lora_weights.safetensors": b"\x00weights" * 100,
        "README.md": b"# card\n",
        "images/step_2.png": b"\x89PNG fake bytes",
    }
    assert {auth for _, _, auth in hub_server.requests} == {f"Bearer {TOKEN}"}


def test_public_repo_and_a_path_in_the_repo(hub_server: HubTestServer, tmp_path):
    folder = _folder(tmp_path)
    repo = HubRepo.from_options({"hub_model_id": "me/pub", "model_card_private": False})
    url = repo.push_folder(folder, "checkpoint-4", allow=["*.safetensors"], backoff=FAST)
    assert url.endswith("/me/pub/tree/main/checkpoint-4")
    stored = hub_server.repos["me/pub"]
    assert stored.private is False
    assert list(stored.files) == ["checkpoint-4/pytorch_lora_weights.safetensors"]


def test_transient_503s_are_retried(hub_server: HubTestServer, tmp_path):
    hub_server.fail("create", 1)
    hub_server.fail("commit", 1)
    repo = HubRepo.from_options({"hub_model_id": "me/flaky"})
    repo.push_folder(_folder(tmp_path), backoff=FAST)
    assert len(hub_server.requests_to("create")) == 2  # one 503, then created
    assert len(hub_server.requests_to("commit")) == 2
    assert len(hub_server.repos["me/flaky"].commits) == 1


def test_final_failure_names_the_repo_and_keeps_local_files(hub_server, tmp_path):
    hub_server.fail("create", -1)
    folder = _folder(tmp_path)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    repo = HubRepo.from_options({"hub_model_id": "me/down"})
    with pytest.raises(PublishError) as err:
        repo.push_folder(folder, backoff=FAST)
    message = str(err.value)
    assert "'me/down'" in message and hub_server.url in message and "503" in message
    assert "local files are intact" in message
    assert len(hub_server.requests_to("create")) == FAST.attempts
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert TOKEN not in message


def test_a_wrong_token_is_not_retried(hub_server: HubTestServer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrongwrongwrong")
    repo = HubRepo.from_options({"hub_model_id": "me/denied"})
    with pytest.raises(PublishError, match="401"):
        repo.push_folder(_folder(tmp_path), backoff=FAST)
    assert len(hub_server.requests_to("create")) == 1


def test_what_counts_as_transient():
    from types import SimpleNamespace

    from st_ray.publish.retry import is_transient, with_retries

    def http(status: int) -> Exception:
        err = RuntimeError(f"HTTP {status}")
        err.response = SimpleNamespace(status_code=status)  # type: ignore[attr-defined]
        return err

    assert is_transient(http(503)) and is_transient(http(429)) and is_transient(http(500))
    assert not is_transient(http(404)) and not is_transient(http(401))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert not is_transient(ValueError("bad README metadata"))
    assert Backoff(attempts=5, first_wait_s=2, max_wait_s=10).waits() == [2, 4, 8, 10]

    calls, waited = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise http(502)
        return "done"

    assert with_retries(flaky, "test", Backoff(attempts=3), sleep=waited.append) == "done"
    assert waited == [2.0, 4.0]

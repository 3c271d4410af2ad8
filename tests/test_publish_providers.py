"""publishing_config's azure_blob and dropbox providers, each uploading through its real SDK to
a loopback server that implements the service's REST calls (tests/azure_server.py,
tests/dropbox_server.py) and records what arrived."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from st_ray.publish.dropbox_target import DropboxTarget, dropbox_root
from st_ray.publish.hub import PublishError
from st_ray.publish.providers import entries_of, problems_of
from st_ray.publish.publisher import Publisher, Uploaded
from st_ray.publish.retry import Backoff
from tests import dropbox_server as dbx
from tests.azure_server import ACCOUNT_KEY
from tests.test_publish import _output

FAST = Backoff(attempts=2, first_wait_s=0.01)
BIG = bytes(range(256)) * 40  # 10 KiB: several Azure blocks / Dropbox session chunks below


def _publisher(entries: list[dict], tmp_path: Path, **replace) -> Publisher:
    (tmp_path / "publish.json").write_text(json.dumps(entries))
    assert problems_of(entries_of("publish.json", tmp_path)) == []
    publisher = Publisher.from_options({"publishing_config": "publish.json"}, tmp_path)
    assert publisher is not None and publisher.hub is None
    publisher.providers = [dataclasses.replace(t, **replace) for t in publisher.providers]
    publisher.backoff = FAST
    return publisher


def _final(publisher: Publisher, out: Path) -> list[Uploaded]:
    seen: list[Uploaded] = []
    publisher.on_uploaded.append(seen.append)
    publisher.final(out, 4)
    publisher.wait()
    return seen


# -- Azure Blob ------------------------------------------------------------------------------------


def test_azure_container_receives_the_final_output(blob_server, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    out = _output(tmp_path)
    (out / "transformer.safetensors").write_bytes(BIG)
    entry = {
        "provider": "azure_blob",
        "connection_string": blob_server.connection_string(),
        "container": "simpletuner",
        "base_path": "models/latest",
    }
    # Small put sizes make the SDK send the big file as blocks and a block list.
    blocks = {"client_options": {"max_single_put_size": 4096, "max_block_size": 4096}}
    seen = _final(_publisher([entry], tmp_path, **blocks), out)

    blobs = blob_server.containers["simpletuner"]
    prefix = "models/latest/tiny-lora"
    assert blobs == {
        f"{prefix}/README.md": (out / "README.md").read_bytes(),
        f"{prefix}/pytorch_lora_weights.safetensors": b"final weights",
        f"{prefix}/transformer.safetensors": BIG,
        f"{prefix}/validation/step-4/cat-64x64-0.png": b"png",
    }
    assert blob_server.content_types[f"simpletuner/{prefix}/README.md"] == "text/markdown"
    assert blob_server.operations().count("put-block") == 3  # 10 KiB in 4 KiB blocks
    assert "put-block-list" in blob_server.operations()
    assert all(signed for *_, signed in blob_server.requests)  # shared-key auth on each call
    assert [(u.target, u.remote, u.kind) for u in seen] == [
        ("azure_blob", f"{blob_server.url}/simpletuner/{prefix}", "final")
    ]
    logged = caplog.text + capsys.readouterr().out
    assert "published final tiny-lora to azure_blob container simpletuner" in logged
    assert ACCOUNT_KEY not in logged and "AccountKey" not in logged


def test_azure_account_url_with_key_and_an_existing_container(blob_server, tmp_path):
    entry = {
        "provider": "azure",
        "account_url": blob_server.url,
        "account_key": ACCOUNT_KEY,
        "container_name": "runs",
    }
    out = _output(tmp_path)
    publisher = _publisher([entry], tmp_path)
    publisher.final(out, 2)
    blob_server.fail(1, 503)  # the second run's first call: retried with st_ray's backoff
    publisher.final(out, 4)
    publisher.wait()
    assert publisher.failures == []
    assert blob_server.operations().count("create-container") == 3  # 201, 503, then 409
    assert blob_server.containers["runs"]["tiny-lora/pytorch_lora_weights.safetensors"] == (
        b"final weights"
    )


def test_a_refused_azure_upload_names_the_container_without_the_key(blob_server, tmp_path):
    key = ACCOUNT_KEY
    entry = {"provider": "azure_blob", "account_url": blob_server.url, "account_key": key}
    publisher = _publisher([{**entry, "container": "models"}], tmp_path)
    blob_server.fail(1, 403)  # not transient: fails at once
    publisher.final(_output(tmp_path), 4)
    with pytest.raises(PublishError) as err:
        publisher.wait()
    message = str(err.value)
    assert "azure_blob container models" in message and "AuthorizationFailure" in message
    assert key not in message and key[:20] not in message


# -- Dropbox ---------------------------------------------------------------------------------------


def test_dropbox_receives_the_final_output(dropbox_server, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    out = _output(tmp_path)
    (out / "transformer.safetensors").write_bytes(BIG)
    entry = {"provider": "dropbox", "token": dbx.ACCESS_TOKEN, "base_path": "/SimpleTuner/runs"}
    publisher = _publisher([entry], tmp_path, session=dropbox_server.session(), chunk_size=4096)
    seen = _final(publisher, out)

    root = "/SimpleTuner/runs/tiny-lora"
    assert dropbox_server.files == {
        f"{root}/README.md": (out / "README.md").read_bytes(),
        f"{root}/pytorch_lora_weights.safetensors": b"final weights",
        f"{root}/transformer.safetensors": BIG,
        f"{root}/validation/step-4/cat-64x64-0.png": b"png",
    }
    # The big file went in an upload session (4 KiB + 4 KiB appended + the last 2 KiB).
    sessions = [r for r in dropbox_server.routes() if "upload_session" in r]
    assert [r.rsplit("/", 1)[1] for r in sessions] == ["start", "append_v2", "finish"]
    assert {token for *_, token in dropbox_server.requests} == {dbx.ACCESS_TOKEN}
    assert [(u.target, u.remote) for u in seen] == [
        ("dropbox", "dropbox://SimpleTuner/runs/tiny-lora")
    ]
    logged = caplog.text + capsys.readouterr().out
    assert "published final tiny-lora to dropbox /SimpleTuner/runs" in logged
    assert dbx.ACCESS_TOKEN not in logged


def test_dropbox_refresh_token_gets_an_access_token_first(dropbox_server, tmp_path):
    entry = {
        "provider": "dropbox",
        "refresh_token": dbx.REFRESH_TOKEN,
        "app_key": dbx.APP_KEY,
        "app_secret": dbx.APP_SECRET,
    }
    publisher = _publisher([entry], tmp_path, session=dropbox_server.session())
    _final(publisher, _output(tmp_path))
    assert dropbox_server.requests[0] == ("/oauth2/token", "", "refresh_token")
    assert {token for *_, token in dropbox_server.requests[1:]} == {dbx.REFRESHED_TOKEN}
    assert "/tiny-lora/pytorch_lora_weights.safetensors" in dropbox_server.files


def test_dropbox_retries_a_503_and_names_the_target_when_the_token_is_refused(
    dropbox_server, tmp_path
):
    good = {"provider": "dropbox", "access_token": dbx.ACCESS_TOKEN, "base_path": "ok"}
    dropbox_server.fail(1, 503)
    _final(_publisher([good], tmp_path, session=dropbox_server.session()), _output(tmp_path))
    assert dropbox_server.routes().count("/2/files/upload") == 4  # 3 files, 1 retried
    assert len(dropbox_server.files) == 3

    bad_token = "sl.not-the-right-token-0123456789"
    bad = {"provider": "dropbox", "token": bad_token, "base_path": "nope"}
    publisher = _publisher([bad], tmp_path, session=dropbox_server.session())
    publisher.final(_output(tmp_path / "again"), 4)
    with pytest.raises(PublishError) as err:
        publisher.wait()
    assert "dropbox /nope" in str(err.value) and "invalid_access_token" in str(err.value)
    assert bad_token not in str(err.value)


def test_dropbox_paths_are_absolute_under_base_path():
    assert dropbox_root("SimpleTuner/runs/") == "/SimpleTuner/runs"
    assert dropbox_root("/") == dropbox_root(None) == ""
    target = DropboxTarget.from_entry({"provider": "dropbox", "token": "t", "base_path": "a//b"})
    assert target.remote_path("tiny-lora", "validation/x.png") == "/a/b/tiny-lora/validation/x.png"
    assert DropboxTarget.from_entry({"provider": "dropbox", "token": "t"}).remote_path("o") == "/o"


# -- checks and secrecy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry,fragments",
    [
        (
            {"provider": "azure_blob", "account_key": "SECRETKEY=", "container": "c"},
            ["credentials are required"],
        ),
        (
            {"provider": "azure", "connection_string": "AccountKey=SECRETKEY=", "bucket": "b"},
            ["unknown key(s) bucket", "'container'"],
        ),
        (
            {
                "provider": "azure",
                "account_url": "https://a.blob.core.windows.net",
                "account_name": "a",
                "account_key": "SECRETKEY=",
                "container": "c",
            },
            ["set 'account_url' or 'account_name', not both"],
        ),
        ({"provider": "azure", "container": 3, "connection_string": "SECRETKEY="}, ["string"]),
        ({"provider": "dropbox", "token": "SECRETKEY=", "access_token": "x"}, ["not both"]),
        ({"provider": "dropbox", "base_path": "/x"}, ["credentials are required"]),
    ],
)
def test_bad_entries_are_refused_naming_keys_never_values(entry, fragments):
    (message,) = problems_of([entry])[:1]
    found = " ".join(problems_of([entry]))
    assert message.startswith("entry 1: ")
    for fragment in fragments:
        assert fragment in found
    assert "SECRETKEY" not in found


def test_azure_and_dropbox_credentials_never_reach_the_plan_summary(tmp_path):
    from st_ray.plan import build_plan, format_plan
    from tests.test_config_errors import _base

    config, datasets = _base(tmp_path)
    config["publishing_config"] = [
        {"provider": "azure_blob", "connection_string": "AccountKey=AZSECRET", "container": "c"},
        {"provider": "dropbox", "refresh_token": "DBXREFRESH", "app_key": "k", "app_secret": "S"},
    ]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "multidatabackend.json").write_text(json.dumps(datasets))
    plan = build_plan(tmp_path / "config.json", (), {})
    shown = json.dumps(plan.to_dict()) + format_plan(plan)
    assert "AZSECRET" not in shown and "DBXREFRESH" not in shown

"""Webhooks, hook scripts and the disk guard as parts: real HTTP receivers on 127.0.0.1, real
subprocesses, the real free space of the test's folder."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from st_ray.notify import hooks
from st_ray.notify.disk_guard import DiskGuard, DiskSpaceLow, free_bytes, parse_size
from st_ray.notify.webhooks import Event, WebhookSender, parse_targets
from st_ray.train.notifications import job_id_from_env
from tests.notify_servers import dead_url, receiver

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


# ---------------------------------------------------------------------------- webhook config


def test_webhook_config_forms(tmp_path: Path) -> None:
    discord = {"webhook_type": "discord", "webhook_url": "https://discord.com/api/webhooks/1/x"}
    raw = {"webhook_type": "raw", "callback_url": "http://127.0.0.1:9/cb", "log_level": "error"}
    (only,) = parse_targets(discord)
    assert only.kind == "discord" and only.label == "webhook 0 (discord, https://discord.com)"
    first, second = parse_targets([discord, raw])
    assert second.kind == "raw" and second.log_level == 1 and second.url.endswith("/cb")
    (tmp_path / "hooks.json").write_text(json.dumps([raw]))
    assert parse_targets("hooks.json", tmp_path)[0].kind == "raw"  # beside the config
    for wrong, message in (
        ({"webhook_type": "slack", "webhook_url": "https://x"}, "is not one of discord, raw"),
        ({"webhook_type": "raw"}, "a raw webhook needs 'callback_url'"),
        ({**raw, "log_level": "loud"}, "log_level 'loud' is not one of"),
        ({**raw, "callback": "x"}, "unknown field(s) callback"),
        ({"webhook_type": "raw", "callback_url": "ftp://h/x"}, "must be an http(s) URL"),
    ):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_targets([discord, wrong])


def test_job_id_from_either_variable() -> None:
    assert job_id_from_env({}) is None
    assert job_id_from_env({"SIMPLETUNER_JOB_ID": "st"}) == "st"
    assert job_id_from_env({"SIMPLETUNER_JOB_ID": "st", "ST_RAY_JOB_ID": "ray"}) == "ray"


# ---------------------------------------------------------------------------- delivery


def test_raw_and_discord_targets_receive_the_events(tmp_path: Path) -> None:
    image = tmp_path / "prompt-0.png"
    image.write_bytes(PNG)
    lines: list[str] = []
    with receiver() as raw, receiver(path="/api/webhooks/1/TOKEN") as discord:
        targets = parse_targets(
            [
                {"webhook_type": "raw", "callback_url": raw.url},
                {"webhook_type": "discord", "webhook_url": discord.url, "message_prefix": "p"},
            ]
        )
        sender = WebhookSender(targets, job_id="job-7", run_name="run", log=lines.append)
        sender.send(Event("training.started", "training started", data={"total_steps": 4}))
        sender.send(Event("training.progress", "step 1/4", data={"global_step": 1}, raw_only=True))
        sender.send(Event("validation.images", "validation images", images=[image]))
        sender.close()
    assert lines == []
    bodies = raw.bodies()
    assert [b["type"] for b in bodies] == [
        "training.started",
        "training.progress",
        "validation.images",
    ]
    assert {b["job_id"] for b in bodies} == {"job-7"} and bodies[0]["run_name"] == "run"
    assert bodies[0]["data"] == {"total_steps": 4}
    (sent,) = bodies[2]["images"]
    assert sent["name"] == "prompt-0.png" and base64.b64decode(sent["png_base64"]) == PNG
    # Discord: no progress; a JSON line, then the images as a multipart upload.
    first, second = discord.received
    assert first.json() == {"content": "`(p)` training started"}
    assert second.content_type == "multipart/form-data"
    assert b'name="payload_json"' in second.body and b"`(p)` validation images" in second.body
    assert b'filename="prompt-0.png"' in second.body and PNG in second.body


def test_dead_and_failing_endpoints_are_reported_once_without_their_url() -> None:
    lines: list[str] = []
    with receiver(status=500, path="/hook/FAILING-TOKEN") as failing:
        targets = parse_targets(
            [
                {"webhook_type": "raw", "callback_url": dead_url()},
                {"webhook_type": "raw", "callback_url": failing.url},
            ]
        )
        sender = WebhookSender(
            targets, job_id=None, run_name="run", log=lines.append, retries=3, backoff=0.01
        )
        for step in range(5):
            sender.send(Event("training.progress", f"step {step}", raw_only=True))
        sender.close()
    # The first event is tried 3 times, later ones once each while the target stays down.
    assert len(failing.received) == 3 + 4
    assert sender.failed == {0: 5, 1: 5}
    text = "\n".join(lines)
    assert "TOKEN" not in text  # the URL is a secret
    dead = [line for line in lines if line.startswith("webhook 0 (raw, http://127.0.0.1)")]
    broken = [line for line in lines if line.startswith("webhook 1 (raw, http://127.0.0.1)")]
    assert len(dead) == len(broken) == 2  # the first failure, then the summary at close
    assert "not delivered after 3 tries: cannot connect" in dead[0]
    assert "not delivered after 3 tries: HTTP 500" in broken[0]
    assert "Training goes on" in broken[0]
    assert dead[1].endswith("5 event(s) not delivered, 0 delivered")


def test_a_target_that_answers_again_is_counted_delivered() -> None:
    lines: list[str] = []
    with receiver(status=500) as flaky:
        (target,) = parse_targets({"webhook_type": "raw", "callback_url": flaky.url})
        sender = WebhookSender([target], job_id=None, run_name="r", log=lines.append, backoff=0)
        sender.send(Event("training.started", "a"))
        sender.close(wait_s=10)
        assert sender.failed == {0: 1}
        flaky.status = 200
        sender = WebhookSender([target], job_id=None, run_name="r", log=lines.append, backoff=0)
        sender.send(Event("training.finished", "b"))
        sender.close(wait_s=10)
    assert sender.failed == {} and sender.delivered == {0: 1}


def test_log_level_filters_events() -> None:
    with receiver() as quiet:
        targets = parse_targets(
            {"webhook_type": "raw", "callback_url": quiet.url, "log_level": "error"}
        )
        sender = WebhookSender(targets, job_id=None, run_name="r", log=print)
        sender.send(Event("training.started", "a"))
        sender.send(Event("training.error", "b", severity="error"))
        sender.close()
    assert [b["type"] for b in quiet.bodies()] == ["training.error"]


# ---------------------------------------------------------------------------- hook scripts


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_placeholders_are_filled_per_word() -> None:
    template = "/opt/hook.sh {local_checkpoint_path} --step={global_step} {validation_guidance} {lora_type}"
    words = hooks.render(
        template,
        {"local_checkpoint_path": "/runs/my run/checkpoint-2", "global_step": 2, "lora_type": None},
    )
    assert words == ["/opt/hook.sh", "/runs/my run/checkpoint-2", "--step=2", "", ""]
    assert hooks.check_template(template) is None
    assert "unknown placeholder(s) {local_path}" in hooks.check_template("x {local_path}")
    assert "cannot be split" in hooks.check_template("x 'open")


def test_scripts_run_in_the_background_and_failures_never_raise(tmp_path: Path) -> None:
    out = tmp_path / "calls.txt"
    ok = _script(tmp_path / "ok.sh", f'echo "$@" >> "{out}"\necho hello from the hook\n')
    bad = _script(tmp_path / "bad.sh", "echo about to fail\nexit 3\n")
    lines: list[str] = []
    runner = hooks.ScriptRunner(lines.append)
    runner.submit(
        "post_checkpoint_script",
        f"{ok} {{local_checkpoint_path}} {{global_step}}",
        {"local_checkpoint_path": "/ck/checkpoint-2", "global_step": 2},
    )
    runner.submit("post_checkpoint_script", f"{bad} {{global_step}}", {"global_step": 4})
    runner.submit("post_checkpoint_script", str(tmp_path / "missing.sh"), {})
    upload = hooks.UploadHook(
        f"{ok} {{remote_checkpoint_path}} {{tracker_run_name}}", {"tracker_run_name": "r1"}, runner
    )
    upload("/out/final", "s3://bucket/run/final", 4)
    runner.close(wait_s=60)
    assert out.read_text().splitlines() == ["/ck/checkpoint-2 2", "s3://bucket/run/final r1"]
    assert "[post_checkpoint_script] hello from the hook" in lines
    assert "[post_checkpoint_script] about to fail" in lines
    assert any("bad.sh' exited with 3" in line and "training goes on" in line for line in lines)
    assert any("cannot start" in line and "missing.sh" in line for line in lines)
    assert runner.failures == 2


def test_upload_hook_from_options(tmp_path: Path) -> None:
    out = tmp_path / "up.txt"
    ok = _script(tmp_path / "ok.sh", f'echo "$@" >> "{out}"\n')
    assert hooks.upload_hook({}, "sd1x") is None
    hook = hooks.upload_hook(
        {"post_upload_script": f"{ok} {{remote_checkpoint_path}} {{model_family}} {{global_step}}"},
        "sd1x",
        log=lambda line: None,
    )
    hook("/local/ck", "https://hub/repo", 7)
    hook.close()
    assert out.read_text() == "https://hub/repo sd1x 7\n"


# ---------------------------------------------------------------------------- disk guard


def test_sizes() -> None:
    assert parse_size("100G") == 100 * 1024**3
    assert parse_size("50M") == 50 * 1024**2 and parse_size("500K") == 500 * 1024
    assert parse_size("1T") == 1024**4 and parse_size("1.5g") == int(1.5 * 1024**3)
    assert parse_size("4096") == 4096 and parse_size("2GiB") == 2 * 1024**3
    with pytest.raises(ValueError, match="'lots' is not a size"):
        parse_size("lots")


def _above_free(folder: Path) -> int:
    return free_bytes(folder) + 1024**4  # a terabyte more than there is


def test_disk_guard_stop(tmp_path: Path) -> None:
    guard = DiskGuard(_above_free(tmp_path), "stop", None, log=print)
    with pytest.raises(DiskSpaceLow) as err:
        guard.check([tmp_path], step=6, last_checkpoint="/runs/r/checkpoint-4")
    text = str(err.value)
    assert f"free on {tmp_path}" in text and "training stopped before saving" in text
    assert "step 6" in text and "the last good checkpoint is /runs/r/checkpoint-4" in text
    DiskGuard(1024, "stop", None, log=print).check(
        [tmp_path / "not-yet"], step=1, last_checkpoint=None
    )


def test_disk_guard_wait_polls_and_logs(tmp_path: Path) -> None:
    lines: list[str] = []
    slept: list[float] = []
    guard = DiskGuard(_above_free(tmp_path), "wait", None, log=lines.append, poll_seconds=0.5)

    def sleep(seconds: float) -> None:  # space comes back after the second wait
        slept.append(seconds)
        if len(slept) == 2:
            guard.threshold = 1024

    guard.sleep = sleep
    guard.check([tmp_path], step=3, last_checkpoint=None)
    assert slept == [0.5, 0.5]
    assert sum("checking again in 0.5 s" in line for line in lines) == 2
    assert lines[-1] == "disk_low_threshold: space is back; saving the checkpoint at step 3"


def test_disk_guard_script(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    lines: list[str] = []
    cleanup = _script(tmp_path / "cleanup.sh", f'touch "{marker}"\necho cleaned\n')
    guard = DiskGuard(_above_free(tmp_path), "script", str(cleanup), log=lines.append)
    with pytest.raises(DiskSpaceLow, match="after disk_low_script; training stopped"):
        guard.check([tmp_path], step=2, last_checkpoint=None)  # still too little room
    assert marker.exists() and "[disk_low_script] cleaned" in lines
    failing = _script(tmp_path / "fail.sh", "exit 1\n")
    guard.script = str(failing)
    with pytest.raises(DiskSpaceLow, match="after disk_low_script failed"):
        guard.check([tmp_path], step=2, last_checkpoint=None)
    # A script that frees the space: the save goes ahead.
    ballast = tmp_path / "ballast"
    ballast.write_bytes(b"x")
    frees = _script(tmp_path / "frees.sh", f'rm "{ballast}"\n')
    real = guard.free
    guard.script = str(frees)
    guard.free = lambda folder: real(folder) if not ballast.exists() else 0
    guard.threshold = 1024
    guard.check([tmp_path], step=2, last_checkpoint=None)
    assert not ballast.exists()


# ---------------------------------------------------------------------------- the run's notifier


def test_checkpoint_hook_reads_the_staging_copy_when_storage_is_remote(tmp_path: Path) -> None:
    from st_ray.notify.hooks import ScriptRunner
    from st_ray.train.notifications import RunNotifier

    seen = tmp_path / "seen.txt"
    hook = _script(tmp_path / "hook.sh", f'ls "$1" > "{seen}"\necho "$2" >> "{seen}"\n')
    lines: list[str] = []
    notifier = RunNotifier(
        runner=ScriptRunner(lines.append),
        options={"post_checkpoint_script": f"{hook} {{local_checkpoint_path}} {{global_step}}"},
    )
    staging = tmp_path / "st_ray-ckpt-x"
    staging.mkdir()
    (staging / "checkpoint_manifest.json").write_text("{}")
    notifier.expect_saved()  # handed to Ray Train; its upload thread calls back
    notifier.checkpoint_saved(
        8,
        staging,
        "s3://bucket/run/checkpoint-8",
        saved_is_local=False,
        series="checkpoint",
        reported=True,
    )
    notifier.close()
    assert seen.read_text().split() == ["checkpoint_manifest.json", "8"]
    assert not staging.exists()  # deleted once the script ended
    assert notifier.last_checkpoint == "s3://bucket/run/checkpoint-8"
    # Local run storage: the script gets the saved folder, the staging copy goes at once.
    saved = tmp_path / "run" / "checkpoint-9"
    saved.mkdir(parents=True)
    (saved / "weights.safetensors").write_text("w")
    staging.mkdir()
    notifier = RunNotifier(
        runner=ScriptRunner(lines.append),
        options={"post_checkpoint_script": f"{hook} {{local_checkpoint_path}} {{global_step}}"},
    )
    notifier.checkpoint_saved(9, staging, str(saved), saved_is_local=True, series="checkpoint")
    assert not staging.exists()
    notifier.close()
    assert seen.read_text().split() == ["weights.safetensors", "9"]


def test_post_upload_script_runs_after_each_publisher_upload(tmp_path: Path) -> None:
    """The publisher's callback (train/events.py) runs post_upload_script: a checkpoint's
    script gets the checkpoint in run storage (the staged upload copy is gone by then)."""
    import pyarrow.fs as pafs
    import torch

    from st_ray.notify.hooks import ScriptRunner
    from st_ray.publish.publisher import Uploaded
    from st_ray.train.context import WorkerContext
    from st_ray.train.events import after_upload
    from st_ray.train.notifications import RunNotifier

    out = tmp_path / "up.txt"
    ok = _script(tmp_path / "ok.sh", f'echo "$@" >> "{out}"\n')
    command = f"{ok} {{local_checkpoint_path}} {{remote_checkpoint_path}} {{global_step}}"
    notifier = RunNotifier(
        runner=ScriptRunner(lambda line: None), options={"post_upload_script": command}
    )
    ctx = WorkerContext(
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        report=lambda metrics, directory: None,
        resume_dir=None,
        run_fs=pafs.LocalFileSystem(),
        run_folder=str(tmp_path / "runs" / "r"),
    )
    callback = after_upload(notifier, ctx)
    hub = "https://hub.example/u/m/tree/main"
    callback(Uploaded(tmp_path / "staged", f"{hub}/checkpoint-2", 2, "hub", "checkpoint"))
    callback(Uploaded(tmp_path / "out", hub, 4, "hub", "final"))
    notifier.close()
    assert out.read_text().splitlines() == [
        f"{tmp_path}/runs/r/checkpoint-2 {hub}/checkpoint-2 2",
        f"{tmp_path}/out {hub} 4",
    ]

"""The run's publisher (background uploads, callbacks, failures), publishing_config targets on
the S3 test server, and the watermark of validation images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from st_ray.publish.hub import PublishError
from st_ray.publish.providers import S3Target, entries_of, problems_of
from st_ray.publish.publisher import Publisher, Uploaded
from st_ray.publish.retry import Backoff

FAST = Backoff(attempts=2, first_wait_s=0.01)


def _checkpoint(root: Path, step: int) -> tuple[Path, list[str]]:
    folder = root / f"ckpt-{step}"
    folder.mkdir(parents=True)
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"w%d" % step)
    (folder / "checkpoint_manifest.json").write_text(json.dumps({"step": step}))
    (folder / "training_state.pt").write_bytes(b"optimizer state stays in run storage")
    return folder, ["pytorch_lora_weights.safetensors", "checkpoint_manifest.json"]


def _output(root: Path) -> Path:
    out = root / "out" / "tiny-lora"
    (out / "validation" / "step-4").mkdir(parents=True)
    (out / "pytorch_lora_weights.safetensors").write_bytes(b"final weights")
    (out / "README.md").write_text("---\ntags:\n- st_ray\n---\n# tiny-lora\n")
    (out / "validation" / "step-4" / "cat-64x64-0.png").write_bytes(b"png")
    return out


def _publisher(**options) -> Publisher:
    base = {"push_to_hub": True, "hub_model_id": "me/tiny-lora"}
    publisher = Publisher.from_options({**base, **options})
    assert publisher is not None
    publisher.backoff = FAST
    return publisher


def test_background_checkpoints_and_final_output_reach_the_hub(hub_server, tmp_path):
    publisher = _publisher(push_checkpoints_to_hub=True, push_to_hub_background=True)
    seen: list[Uploaded] = []
    publisher.on_uploaded.append(seen.append)
    for step in (2, 4):
        folder, files = _checkpoint(tmp_path, step)
        publisher.checkpoint(folder, files, step)
        # Ray takes the folder away once reported: the upload must not depend on it.
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    out = _output(tmp_path)
    publisher.final(out, 4)
    publisher.wait()

    repo = hub_server.repos["me/tiny-lora"]
    assert repo.private is True
    assert [c.summary for c in repo.commits] == [
        "st_ray checkpoint-2",
        "st_ray checkpoint-4",
        "st_ray final model",
    ]
    assert repo.files["checkpoint-2/pytorch_lora_weights.safetensors"] == b"w2"
    assert "checkpoint-4/checkpoint_manifest.json" in repo.files
    assert not any(name.endswith("training_state.pt") for name in repo.files)
    assert repo.files["pytorch_lora_weights.safetensors"] == b"final weights"
    assert repo.files["validation/step-4/cat-64x64-0.png"] == b"png"
    assert repo.files["README.md"].startswith(b"---\ntags:")
    assert [(u.kind, u.step, u.target) for u in seen] == [
        ("checkpoint", 2, "hub"),
        ("checkpoint", 4, "hub"),
        ("final", 4, "hub"),
    ]
    assert seen[0].remote == f"{hub_server.url}/me/tiny-lora/tree/main/checkpoint-2"
    assert seen[2].local == out and seen[2].remote == f"{hub_server.url}/me/tiny-lora"
    assert not seen[0].local.exists()  # the staged copy is removed after its upload


def test_checkpoints_are_pushed_only_when_asked(hub_server, tmp_path):
    publisher = _publisher()
    folder, files = _checkpoint(tmp_path, 2)
    publisher.checkpoint(folder, files, 2)
    publisher.wait()
    assert hub_server.requests == []


def test_a_broken_hub_fails_the_final_push_once_and_loudly(hub_server, tmp_path, capsys):
    hub_server.fail("create", -1)
    publisher = _publisher(push_checkpoints_to_hub=True, push_to_hub_background=True)
    folder, files = _checkpoint(tmp_path, 2)
    publisher.checkpoint(folder, files, 2)  # fails too, but training would go on
    out = _output(tmp_path)
    publisher.final(out, 4)
    with pytest.raises(PublishError) as err:
        publisher.wait()
    assert str(err.value).count("me/tiny-lora") == 1  # only the final output's failure
    assert "final" in str(err.value) and "local files are intact" in str(err.value)
    assert (out / "pytorch_lora_weights.safetensors").read_bytes() == b"final weights"
    log = capsys.readouterr().out
    assert log.count("publishing checkpoint checkpoint-2 to hub failed") == 1
    assert log.count("publishing final tiny-lora to hub failed") == 1
    assert len(publisher.failures) == 2


def test_nothing_to_publish_means_no_publisher():
    assert Publisher.from_options({"hub_model_id": "me/x"}) is None


# -- publishing_config ---------------------------------------------------------------------------


def _entry(s3_server, bucket: str, **extra) -> dict:
    return {
        "provider": "s3",
        "bucket": bucket,
        "region": s3_server.region,
        "access_key": s3_server.key,
        "secret_key": s3_server.secret,
        "endpoint_url": s3_server.endpoint_url,
        **extra,
    }


def test_s3_and_b2_targets_receive_the_final_output(s3_server, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)  # the entry's own settings are what count
    bucket = s3_server.create_bucket()
    entries = [
        _entry(s3_server, bucket, base_path="runs/2026"),
        # Backblaze B2 is the same S3 code with B2's endpoint; a public URL is returned.
        _entry(
            s3_server,
            bucket,
            provider="backblaze_b2",
            base_path="b2",
            public_base_url="https://cdn.example.com/models",
        ),
    ]
    config = tmp_path / "publish.json"
    config.write_text(json.dumps(entries))
    assert problems_of(entries_of("publish.json", tmp_path)) == []
    publisher = Publisher.from_options({"publishing_config": "publish.json"}, tmp_path)
    assert publisher is not None and publisher.hub is None
    seen: list[Uploaded] = []
    publisher.on_uploaded.append(seen.append)
    out = _output(tmp_path)
    publisher.final(out, 4)
    publisher.wait()

    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    for prefix in ("runs/2026/tiny-lora", "b2/tiny-lora"):
        assert {
            f"{prefix}/pytorch_lora_weights.safetensors",
            f"{prefix}/README.md",
            f"{prefix}/validation/step-4/cat-64x64-0.png",
        } <= keys
    body = s3_server.client().get_object(
        Bucket=bucket, Key="runs/2026/tiny-lora/pytorch_lora_weights.safetensors"
    )["Body"]
    assert body.read() == b"final weights"
    assert [(u.target, u.remote) for u in seen] == [
        ("s3", f"s3://{bucket}/runs/2026/tiny-lora"),
        ("backblaze_b2", "https://cdn.example.com/models/b2/tiny-lora"),
    ]


def test_a_failed_s3_push_names_the_target_without_its_secret(s3_server, tmp_path):
    bucket = "no-such-bucket-here"
    target = S3Target.from_entry(_entry(s3_server, bucket, secret_key="not-the-secret-XYZ"))
    publisher = Publisher(providers=[target], backoff=FAST)
    publisher.final(_output(tmp_path), 4)
    with pytest.raises(PublishError) as err:
        publisher.wait()
    assert f"s3://{bucket}" in str(err.value)
    assert "not-the-secret-XYZ" not in str(err.value)


def test_publishing_credentials_never_reach_the_plan_summary(tmp_path):
    from st_ray.plan import build_plan, format_plan
    from tests.test_config_errors import _base

    config, datasets = _base(tmp_path)
    config["publishing_config"] = [
        {
            "provider": "s3",
            "bucket": "b",
            "access_key": "AKIAIOSFODNN7EXAMPLE",
            "secret_key": "S3CR3T",
        }
    ]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "multidatabackend.json").write_text(json.dumps(datasets))
    plan = build_plan(tmp_path / "config.json", (), {})
    shown = json.dumps(plan.to_dict()) + format_plan(plan)
    assert "S3CR3T" not in shown and "AKIAIOSFODNN7EXAMPLE" not in shown


# -- enable_watermark ----------------------------------------------------------------------------


def test_watermark_is_embedded_and_readable():
    import numpy as np
    from PIL import Image

    from st_ray.train import watermark

    # Textured content carries DWT-DCT bits best (flat or smooth areas lose a few to rounding).
    pixels = np.random.RandomState(0).rand(256, 320, 3) * 255
    image = Image.fromarray(pixels.astype("uint8"))
    marked = watermark.apply(image, {"enable_watermark": True})
    assert marked.size == image.size
    assert watermark.read(marked) == watermark.BITS
    assert watermark.read(image) != watermark.BITS
    change = np.abs(np.asarray(marked, dtype=float) - np.asarray(image, dtype=float))
    assert change.max() > 0
    assert watermark.apply(image, {"enable_watermark": False}) is image
    small = Image.new("RGB", (64, 64))
    assert watermark.apply(small, {"enable_watermark": True}) is small  # below 256x256


def test_validation_images_carry_the_watermark(zoo_root: Path, tmp_path: Path) -> None:
    import torch
    from diffusers import UNet2DConditionModel
    from PIL import Image

    from st_ray import zoo
    from st_ray.train import watermark
    from st_ray.train.validation import Validator
    from tests.test_validation import FAST as FAST_VALIDATION
    from tests.test_validation import _plan

    model = zoo.ensure("sd1x", zoo_root)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    options = {**FAST_VALIDATION, "validation_resolution": "256", "enable_watermark": True}
    (path,) = Validator(_plan(tmp_path, "sd1x", model, **options), unet, torch.device("cpu")).run(1)
    image = Image.open(path)
    bits = watermark.read(image)
    # An unmarked image matches about half of the 48 bits by chance.
    assert sum(a == b for a, b in zip(bits, watermark.BITS, strict=True)) >= 44
    assert "Seed:" in image.text["parameters"]  # the PNG's parameters are kept

"""Training beyond test_training.py: LoRA on every family loads in diffusers, a full Flux
fine-tune, resuming from S3 run storage, recovery from a killed Ray Train worker and tracking on
a real MLflow server (secrets redacted)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from st_ray import zoo
from st_ray.data.pipeline import build_caches
from st_ray.plan import build_plan
from st_ray.train.trainer import fit, fit_in_process
from tests.test_training import _write_config

pytestmark = pytest.mark.usefixtures("ray_local")

SECRET = "sup3r-s3cret-pass"
# The Ray tests reuse the sd2x caches of the family test (cheapest family to cache).
RAY_FAMILY = "sd2x"


def _plan(config: Path, out: Path, *extra: str):
    return build_plan(config, ["--output_dir", str(out), *extra], {})


def _setup(
    root: Path, zoo_root: Path, images: Path, family: str, cache_root: Path | None = None, **options
):
    model = zoo.ensure(family, zoo_root)
    config = _write_config(root, model, images, family, cache_root, **options)
    build_caches(build_plan(config, [], {}))
    return model, config


@pytest.fixture(scope="module")
def setups(tmp_path_factory, zoo_root, example_dataset, family_cache_root):
    """(model, config) per family, caches built once per module (caching dominates the time)."""
    made: dict[str, tuple[Path, Path]] = {}

    def get(family: str) -> tuple[Path, Path]:
        if family not in made:
            root = tmp_path_factory.mktemp(f"more-{family}")
            made[family] = _setup(
                root, zoo_root, example_dataset.images_dir, family, family_cache_root
            )
        return made[family]

    return get


# ------------------------------------------------------------------------ every family


@pytest.mark.parametrize("family", ["sd2x", "sdxl", "sd3", "pixart_sigma"])
def test_family_lora_trains_and_loads_in_diffusers(family: str, setups, tmp_path: Path) -> None:
    import diffusers
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from st_ray.models import get_family
    from st_ray.train.adapters import WEIGHT_NAME

    model, config = setups(family)
    out = tmp_path / "lora"
    plan = _plan(config, out, "--max_train_steps", "2")
    progress, reported = fit_in_process(plan, tmp_path / "ckpt")
    assert progress.global_step == 2 and [r["step"] for r in reported] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in reported)

    spec = get_family(family)
    pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(model)
    denoiser = getattr(pipe, spec.denoiser)
    saved = {
        k.removeprefix(f"{spec.denoiser}."): v for k, v in load_file(out / WEIGHT_NAME).items()
    }
    if hasattr(pipe, "load_lora_weights"):
        pipe.load_lora_weights(out)
        assert pipe.get_list_adapters() == {spec.denoiser: ["default_0"]}
        adapter = "default_0"
    else:
        _load_pixart_lora(denoiser, out / WEIGHT_NAME)
        adapter = "default"
    # Every saved tensor landed in the denoiser (diffusers only warns about keys it drops).
    loaded = get_peft_model_state_dict(denoiser, adapter_name=adapter)
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in saved.items())


def _load_pixart_lora(transformer: torch.nn.Module, path: Path) -> None:
    """PixArt has no diffusers LoRA loader: PEFT with the LoraConfig stored in the file's
    header, as st_ray.train.adapters documents."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open

    from st_ray.train.adapters import METADATA_KEY

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()[METADATA_KEY])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    assert all(k.startswith("transformer.") for k in [*tensors, *meta])
    config = LoraConfig(**{k.removeprefix("transformer."): v for k, v in meta.items()})
    inject_adapter_in_model(config, transformer)
    state = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    result = set_peft_model_state_dict(transformer, state)
    assert not result.unexpected_keys


def test_flux_full_finetune_saves_a_loadable_transformer(setups, tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    model, config = setups("flux")
    out = tmp_path / "full"
    plan = _plan(config, out, "--model_type", "full", "--max_train_steps", "2")
    progress, reported = fit_in_process(plan, tmp_path / "ckpt")
    assert progress.global_step == 2 and all(np.isfinite(r["loss"]) for r in reported)
    trained = FluxTransformer2DModel.from_pretrained(out / "transformer")
    base = dict(
        FluxTransformer2DModel.from_pretrained(model, subfolder="transformer").named_parameters()
    )
    assert not any(".lora_" in name for name, _ in trained.named_parameters())
    assert any(not torch.equal(p, base[name]) for name, p in trained.named_parameters())


# ------------------------------------------------------------------------ S3 run storage


def _s3_manifest(client, bucket: str, checkpoint: str) -> dict:
    key = checkpoint.removeprefix(f"{bucket}/") + "/checkpoint_manifest.json"
    return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def _loss_steps(output_dir: Path) -> list[int]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=10
    )
    return [m.step for m in client.get_metric_history(run.info.run_id, "loss")]


def test_resume_from_s3_run_storage(setups, tmp_path: Path, s3_server, monkeypatch) -> None:
    _, config = setups(RAY_FAMILY)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket()
    storage = (
        "--run_storage_path",
        f"s3://{bucket}/runs",
        "--s3_endpoint_url",
        s3_server.endpoint_url,
    )
    extra = (*storage, "--tracker_run_name", "s3-run")
    client = s3_server.client()

    first = fit(_plan(config, tmp_path / "a", *extra, "--max_train_steps", "2"))
    assert first.metrics["step"] == 2
    # cpus_per_worker auto (the default): the one worker gets both CPUs of the local Ray
    # instance, and torch computes with as many threads.
    assert first.metrics["torch_threads"] == 2
    assert first.checkpoint.startswith(f"{bucket}/runs/s3-run/")
    assert _s3_manifest(client, bucket, first.checkpoint)["progress"]["global_step"] == 2
    assert not (tmp_path / "a" / "ray_runs").exists()  # nothing went to the local default

    # The same run name and storage, more steps: Ray Train hands back step 2's checkpoint.
    second = fit(_plan(config, tmp_path / "a", *extra, "--max_train_steps", "4"))
    assert second.metrics["step"] == 4
    assert _s3_manifest(client, bucket, second.checkpoint)["progress"]["global_step"] == 4
    assert _loss_steps(tmp_path / "a") == [1, 2, 3, 4]  # one MLflow run, continued

    # An explicit s3:// checkpoint under another run name starts from its step.
    explicit = fit(
        _plan(
            config,
            tmp_path / "b",
            *storage,
            "--tracker_run_name",
            "s3-explicit",
            "--max_train_steps",
            "4",
            "--resume_from_checkpoint",
            f"s3://{first.checkpoint}",
        )
    )
    assert explicit.metrics["step"] == 4
    assert explicit.checkpoint.startswith(f"{bucket}/runs/s3-explicit/")
    assert _s3_manifest(client, bucket, explicit.checkpoint)["progress"]["global_step"] == 4
    assert _loss_steps(tmp_path / "b") == [3, 4]


# ------------------------------------------------------------------------ a killed worker


def _train_workers() -> list:
    """Ray Train worker processes of the Ray instance this test process started (Ray runs them
    as descendants of this process, titled ``ray::RayTrainWorker``)."""
    import psutil

    found = []
    for process in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _registered_checkpoints(run_dir: Path) -> list[str]:
    """Checkpoints Ray Train's controller has registered (what a restart resumes from)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return []
    return [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]


def test_killed_worker_is_recovered_with_default_options(setups, tmp_path: Path, capsys) -> None:
    """jobs/train.py with max_failures left at its default: a Train worker SIGKILLed after
    its first checkpoint (an OOM kill, a reclaimed node) is restarted from that checkpoint
    and the job exits 0 at exactly max_train_steps."""
    from st_ray.config.options import OPTIONS
    from st_ray.jobs.train import main

    assert next(o for o in OPTIONS if o.name == "max_failures").default > 0
    _, config = setups(RAY_FAMILY)
    storage = tmp_path / "runs"
    killed: list[tuple[int, list[str]]] = []
    stop = threading.Event()
    # Workers of earlier runs still shutting down are left alone (Ray turns prestarted idle
    # processes into actors, so a start time would not tell this run's worker apart).
    earlier = {p.pid for p in _train_workers()}

    def kill_after_first_checkpoint() -> None:
        while not stop.is_set():
            registered = _registered_checkpoints(storage / "killed")
            if registered:
                for process in _train_workers():
                    if process.pid not in earlier:
                        process.send_signal(signal.SIGKILL)
                        killed.append((process.pid, registered))
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    try:
        code = main(
            [
                "--config",
                str(config),
                "--output_dir",
                str(tmp_path / "out"),
                "--run_storage_path",
                str(storage),
                "--tracker_run_name",
                "killed",
                "--max_train_steps",
                "8",
            ]
        )
    finally:
        stop.set()
        killer.join(timeout=10)
    printed = capsys.readouterr().out
    assert code == 0
    assert "recovery      up to 3 restart(s) from the latest checkpoint" in printed
    assert killed, "the worker finished before it could be killed"
    assert "checkpoint-8" not in killed[0][1]
    assert "at step 8" in printed
    latest = max(_registered_checkpoints(storage / "killed"), key=lambda n: int(n.split("-")[-1]))
    manifest = json.loads((storage / "killed" / latest / "checkpoint_manifest.json").read_text())
    assert manifest["progress"]["global_step"] == 8
    # The restarted worker continued from the checkpoint, not from scratch: it kept logging
    # to the MLflow run recorded there, and no step is missing.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(set(steps)) == list(range(1, 9))


# ------------------------------------------------------------------------ MLflow server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real ``mlflow server`` on a free loopback port, in its own process group (uvicorn runs
    as a child) that is ended as a whole. Job execution is off: it only adds consumers."""
    port = _free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start (exit code {server.poll()})")
            time.sleep(0.25)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_mlflow_server_records_the_run_without_secrets(
    setups, tmp_path: Path, mlflow_server: int, monkeypatch
) -> None:
    import mlflow
    from mlflow.tracking._tracking_service import utils

    # The tracker sets the tracking URI process-wide; put back whatever it was (the server
    # goes away after this test).
    monkeypatch.setattr(utils, "_tracking_uri", utils._tracking_uri)

    _, config = setups(RAY_FAMILY)
    uri = f"http://127.0.0.1:{mlflow_server}"
    with_credentials = f"http://trainer:{SECRET}@127.0.0.1:{mlflow_server}"
    plan = _plan(
        config,
        tmp_path / "out",
        "--mlflow_tracking_uri",
        with_credentials,
        "--mlflow_experiment_name",
        "server-test",
        "--max_train_steps",
        "3",
    )
    fit_in_process(plan, tmp_path / "ckpt")

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("server-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    params = run.data.params
    assert params["lora_rank"] == "4" and params["family"] == RAY_FAMILY
    assert "REDACTED" in params["mlflow_tracking_uri"]
    assert not [k for k, v in params.items() if SECRET in v]
    assert SECRET not in json.dumps(run.data.tags)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "final")]
    assert "final/pytorch_lora_weights.safetensors" in artifacts
    for path in (tmp_path / "out").rglob("*"):  # model card, saved config...
        if path.is_file() and path.suffix in (".md", ".json", ".yaml", ".txt", ".toml"):
            assert SECRET not in path.read_text(errors="replace"), path

"""Training end to end on tiny zoo models: LoRA and full fine-tunes, exact resume, Ray Train
with two DDP workers and a resumed run, MLflow records, outputs that diffusers loads."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from st_ray import zoo
from st_ray.data.pipeline import build_caches
from st_ray.plan import build_plan
from st_ray.train.run_identity import resolve
from st_ray.train.trainer import fit, fit_in_process

pytestmark = pytest.mark.usefixtures("ray_local")


def _write_config(
    root: Path,
    model: Path,
    images: Path,
    family: str,
    cache_root: Path | None = None,
    **options,
) -> Path:
    """config.json + datasets for ``family`` in ``root``; the caches go under ``cache_root``
    (default ``root``): pass the session's ``family_cache_root`` to share one family's caches
    between test modules (same dataset, same cache settings)."""
    caches = (cache_root or root) / "cache" / family
    datasets = [
        {
            "id": "photos",
            "type": "local",
            "instance_data_dir": str(images),
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel_area",
            "minimum_image_size": 32,
            "cache_dir_vae": str(caches / "vae"),
        },
        {
            "id": "text",
            "dataset_type": "text_embeds",
            "default": True,
            "type": "local",
            "cache_dir": str(caches / "text"),
        },
    ]
    (root / f"{family}-datasets.json").write_text(json.dumps(datasets))
    config = {
        "model_family": family,
        "pretrained_model_name_or_path": str(model),
        "data_backend_config": str(root / f"{family}-datasets.json"),
        "output_dir": str(root / "out"),
        "train_batch_size": 2,
        "max_train_steps": 4,
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "lora_rank": 4,
        "seed": 3,
        "optimizer": "adamw_bf16",
        "mixed_precision": "no",
        "checkpoint_step_interval": 2,
        "caption_dropout_probability": 0.2,
        **options,
    }
    path = root / f"{family}-config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def sd1x_setup(tmp_path_factory, zoo_root, example_dataset, family_cache_root):
    root = tmp_path_factory.mktemp("train-sd1x")
    model = zoo.ensure("sd1x", zoo_root)
    config = _write_config(root, model, example_dataset.images_dir, "sd1x", family_cache_root)
    build_caches(build_plan(config, [], {}))
    return root, model, config


def _plan(config: Path, out: Path, *extra: str):
    return build_plan(config, ["--output_dir", str(out), *extra], {})


def test_lora_trains_exports_and_tracks(sd1x_setup, tmp_path: Path, hub_server, capsys) -> None:
    from diffusers import StableDiffusionPipeline

    _, model, config = sd1x_setup
    out = tmp_path / "lora"
    # The final output and each checkpoint also go to the loopback Hub (tests/hub_server.py).
    hub = ["--push_to_hub", "true", "--hub_model_id", "me/tiny-lora"]
    hub += ["--push_checkpoints_to_hub", "true", "--push_to_hub_background", "true"]
    # External validation every 2 steps: the script gets the latest checkpoint and the step.
    script = tmp_path / "external.py"
    script.write_text("import sys\nprint('scored', *sys.argv[1:])\n")
    external = [
        *("--validation_prompt", "x", "--validation_step_interval", "2", "--disable_benchmark"),
        *("--validation_method", "external-script", "--validation_external_script"),
        f"{sys.executable} {script} {{global_step}} {{local_checkpoint_path}} {{model_family}}",
    ]
    progress, reported = fit_in_process(_plan(config, out, *hub, *external), tmp_path / "ckpt")
    lines = capsys.readouterr().out.splitlines()
    ckpts = tmp_path / "ckpt"
    assert [line for line in lines if line.startswith("[validation_external_script]")] == [
        f"[validation_external_script] scored 2 {ckpts.resolve() / 'checkpoint-2'} sd1x",
        f"[validation_external_script] scored 4 {ckpts.resolve() / 'checkpoint-4'} sd1x",
    ]
    assert progress.global_step == 4 and [r["step"] for r in reported] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in reported)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    final = out / "tiny-lora"  # output_dir/<hub_model_id's name>, as in SimpleTuner
    pushed = hub_server.repos["me/tiny-lora"]
    assert pushed.private and [c.summary for c in pushed.commits] == [
        "st_ray checkpoint-2",
        "st_ray checkpoint-4",
        "st_ray final model",
    ]
    for name in ("pytorch_lora_weights.safetensors", "README.md"):
        assert pushed.files[name] == (final / name).read_bytes()
    ckpt = tmp_path / "ckpt" / "checkpoint-4"
    assert (
        pushed.files["checkpoint-4/checkpoint_manifest.json"]
        == (ckpt / "checkpoint_manifest.json").read_bytes()
    )

    def render(pipe):
        generator = torch.Generator().manual_seed(0)
        return pipe(
            "a red square",
            num_inference_steps=2,
            height=64,
            width=64,
            generator=generator,
            output_type="np",
        ).images

    pipe = StableDiffusionPipeline.from_pretrained(model)
    base = render(pipe)
    pipe.load_lora_weights(final)  # the diffusers loader takes st_ray's output as is
    assert np.abs(render(pipe) - base).max() > 1e-4

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.params["lora_rank"] == "4"
    assert run.data.params["derived.learning_rate"] == "0.001"  # no lr_scale: as configured
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4]


def test_resume_continues_exactly(sd1x_setup, tmp_path: Path) -> None:
    _, _, config = sd1x_setup
    straight, reported = fit_in_process(_plan(config, tmp_path / "a"), tmp_path / "ck-a")
    resumed, tail = fit_in_process(
        _plan(config, tmp_path / "b"),
        tmp_path / "ck-b",
        resume_from=tmp_path / "ck-a" / "checkpoint-2",
    )
    assert resumed.global_step == straight.global_step == 4
    assert [r["loss"] for r in tail] == [r["loss"] for r in reported[2:]]
    # The loop closes its feed: no read-ahead thread outlives a run.
    assert not [t for t in threading.enumerate() if t.name.startswith("st-ray-feed")]
    a = load_file(tmp_path / "a" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "b" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_regularisation_samples_train_towards_the_base_models_prediction(
    sd1x_setup, tmp_path: Path
) -> None:
    """is_regularisation_data: the target is the denoiser's prediction with the LoRA off. A
    fresh LoRA (B = 0) predicts exactly what the base model does, so every step's loss is 0
    and nothing moves; trained against the images (test above) the loss is not 0."""
    root, _, config = sd1x_setup
    datasets = json.loads((root / "sd1x-datasets.json").read_text())
    datasets[0]["is_regularisation_data"] = True
    (tmp_path / "datasets.json").write_text(json.dumps(datasets))
    plan = _plan(
        config,
        tmp_path / "out",
        "--data_backend_config",
        str(tmp_path / "datasets.json"),
        "--max_train_steps",
        "2",
    )
    assert plan.datasets[0].fields["is_regularisation_data"] is True
    _, reported = fit_in_process(plan, tmp_path / "ckpt")
    assert [r["loss"] for r in reported] == [0.0, 0.0]
    assert [r["grad_norm"] for r in reported] == [0.0, 0.0]


def test_interrupted_checkpoint_is_refused(sd1x_setup, tmp_path: Path) -> None:
    from st_ray.train.checkpoints import MANIFEST, IncompleteCheckpoint

    _, _, config = sd1x_setup
    fit_in_process(_plan(config, tmp_path / "a", "--max_train_steps", "2"), tmp_path / "ck")
    (tmp_path / "ck" / "checkpoint-2" / MANIFEST).unlink()  # as if the write was cut short
    with pytest.raises(IncompleteCheckpoint, match="interrupted"):
        fit_in_process(
            _plan(config, tmp_path / "b"),
            tmp_path / "ck2",
            resume_from=tmp_path / "ck" / "checkpoint-2",
        )


def test_full_finetune_saves_a_loadable_unet(sd1x_setup, tmp_path: Path) -> None:
    """A full fine-tune with use_ema exports the EMA's weights (not the last trained ones) as
    a UNet diffusers loads."""
    from diffusers import UNet2DConditionModel

    from st_ray.train.checkpoints import load_state

    _, model, config = sd1x_setup
    plan = _plan(
        config,
        tmp_path / "full",
        "--model_type",
        "full",
        "--max_train_steps",
        "2",
        "--use_ema",
        "--ema_decay",
        "0.5",
    )
    fit_in_process(plan, tmp_path / "ck")
    exported = dict(
        UNet2DConditionModel.from_pretrained(tmp_path / "full" / "unet").named_parameters()
    )
    base = dict(UNet2DConditionModel.from_pretrained(model, subfolder="unet").named_parameters())
    # The last checkpoint holds the trained weights and the EMA's shadow of each of them.
    final = tmp_path / "ck" / "checkpoint-2"
    trained = dict(UNet2DConditionModel.from_pretrained(final / "unet").named_parameters())
    shadow = load_state(final)["ema"]["shadow"]
    assert shadow and set(shadow) <= set(exported)
    for name, value in shadow.items():
        torch.testing.assert_close(exported[name], value.to(exported[name].dtype), rtol=0, atol=0)
    moved = [n for n in shadow if not torch.equal(trained[n], base[n])]
    assert moved  # training changed the weights ...
    # ... and the export is the EMA of them, which lags behind: neither the base nor the last.
    assert all(not torch.equal(exported[n], trained[n]) for n in moved)
    assert all(not torch.equal(exported[n], base[n]) for n in moved)


def _train_worker_pids() -> set[int]:
    """Ray Train worker processes (``ray::RayTrainWorker``) among this process's descendants."""
    import psutil

    found = set()
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if "RayTrainWorker" in " ".join(process.cmdline()):
                found.add(process.pid)
    return found


def test_ray_train_two_workers_then_resume(sd1x_setup, tmp_path: Path, zoo_root: Path) -> None:
    """Two Ray Train workers train each step together, and a second fit of the same run name
    and storage resumes from the first one's last checkpoint instead of starting over."""
    import mlflow

    _, _, config = sd1x_setup
    storage = tmp_path / "runs"
    extra = (
        "--num_processes",
        "2",
        "--run_storage_path",
        str(storage),
        "--tracker_run_name",
        "ddp",
        "--lr_scale",
    )

    def stop_after_three_steps():  # as if the job were killed after step 3 (pickled by value)
        asked = [0]

        def check() -> bool:
            asked[0] += 1
            return asked[0] >= 3

        return check

    earlier = _train_worker_pids()  # workers of earlier tests still shutting down
    most_at_once = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal most_at_once
        while not done.is_set():
            most_at_once = max(most_at_once, len(_train_worker_pids() - earlier))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # Rolling checkpoints every 3 steps beside Ray's regular series (every 2 steps).
    rolling = ("--checkpointing_rolling_steps", "3")
    try:
        first = fit(
            _plan(config, tmp_path / "out", *extra, *rolling), stop_check=stop_after_three_steps
        )
    finally:
        done.set()
        watcher.join(timeout=10)
    assert most_at_once == 2, f"{most_at_once} Train worker processes ran at once"
    assert first.metrics["step"] == 2 and Path(first.checkpoint).name == "checkpoint-2"
    assert (storage / "ddp" / "rolling-checkpoint-3" / "checkpoint_manifest.json").is_file()
    # lr_scale: 1e-3 x (2 workers x 2 per batch): what ran, recorded beside the options
    assert first.metrics["lr"] == pytest.approx(4e-3)
    manifest = json.loads((Path(first.checkpoint) / "checkpoint_manifest.json").read_text())
    assert manifest["derived"]["learning_rate"] == pytest.approx(4e-3)
    assert manifest["derived"]["world_size"] == 2
    # The same run name and storage again, asked for more steps: Ray Train hands back its
    # latest (checkpoint-2); the newer rolling checkpoint wins, so it continues from step 3.
    # A post_checkpoint_script on rank 0's node once Ray Train has saved each checkpoint.
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$1 $2 $(ls "$1" | wc -l)" >> "{tmp_path / "hooks.txt"}"\n')
    hook.chmod(0o755)
    script = ("--post_checkpoint_script", f"{hook} {{local_checkpoint_path}} {{global_step}}")
    # The second fit validates on its own actor (CPU, no CPU reserved: the 2 workers hold the
    # session's 2), with CLIP scores, while the workers train: due at 4 and 6 (the final).
    clip = zoo.ensure("clip", zoo_root)
    validation = (
        *("--validation_prompt", "a red square", "--validation_step_interval", "2"),
        *("--validation_mode", "async", "--validation_actor_cpus", "0"),
        *("--validation_resolution", "32", "--validation_num_inference_steps", "1"),
        *("--validation_guidance", "1", "--validation_disable_unconditional"),
        *("--evaluation_type", "clip", "--pretrained_evaluation_model_name_or_path", str(clip)),
    )
    plan = _plan(
        config, tmp_path / "out", *extra, *rolling, *script, *validation, "--max_train_steps", "6"
    )
    assert resolve(plan).checkpoint == str(storage / "ddp" / "rolling-checkpoint-3")
    second = fit(plan)
    assert second.metrics["step"] == 6
    hooked = [line.split() for line in (tmp_path / "hooks.txt").read_text().splitlines()]
    assert [(Path(path).name, step) for path, step, _ in hooked] == [
        ("checkpoint-4", "4"),
        ("checkpoint-6", "6"),
    ]
    assert all(Path(path).parent == storage / "ddp" and int(n) >= 3 for path, _, n in hooked)
    manifest = json.loads((Path(second.checkpoint) / "checkpoint_manifest.json").read_text())
    assert manifest["progress"]["global_step"] == 6

    mlflow.set_tracking_uri(plan.tracking_uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]  # step 3 was not trained twice
    # The actor's images and scores are logged under the steps they were rendered for.
    client = mlflow.MlflowClient()
    folders = {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
    assert folders == {"validation/step-4", "validation/step-6"}
    names = [a.path for a in client.list_artifacts(run.info.run_id, "validation/step-6")]
    assert names == ["validation/step-6/validation-32x32-0.png"]
    clip_steps = [m.step for m in client.get_metric_history(run.info.run_id, "clip/mean")]
    assert sorted(clip_steps) == [4, 6]
    assert (tmp_path / "out" / "validation" / "step-6" / "validation-32x32-0.png").is_file()
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| Learning rate | 0.004 (learning_rate 0.001, lr_scale) |" in card


def test_flow_matching_family_trains(
    tmp_path: Path, zoo_root, example_dataset, family_cache_root
) -> None:
    from diffusers import FluxPipeline

    model = zoo.ensure("flux", zoo_root)
    config = _write_config(
        tmp_path,
        model,
        example_dataset.images_dir,
        "flux",
        family_cache_root,
        flux_lora_target="all",
        max_train_steps=2,
    )
    plan = build_plan(config, [], {})
    build_caches(plan)
    progress, reported = fit_in_process(plan, tmp_path / "ck")
    assert progress.global_step == 2 and all(np.isfinite(r["loss"]) for r in reported)
    pipe = FluxPipeline.from_pretrained(model)

    def render():
        return pipe(
            "a red square",
            num_inference_steps=2,
            height=64,
            width=64,
            max_sequence_length=32,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    base = render()
    pipe.load_lora_weights(tmp_path / "out")
    assert pipe.get_active_adapters()  # the LoRA loaded onto the transformer ...
    assert np.abs(render() - base).max() > 1e-4  # ... and changes what the pipeline renders


def test_lost_shard_stops_the_run_naming_it_and_keeps_its_checkpoint(
    sd1x_setup, tmp_path: Path, example_dataset, family_cache_root
) -> None:
    import shutil

    from st_ray.data.cache_index import ShardReadError
    from st_ray.data.cache_store import CacheStore

    _, model, _ = sd1x_setup
    # This test damages its own copy of the session's sd1x caches.
    shutil.copytree(family_cache_root / "cache" / "sd1x", tmp_path / "cache" / "sd1x")
    config = _write_config(tmp_path, model, example_dataset.images_dir, "sd1x")
    fit_in_process(_plan(config, tmp_path / "a", "--max_train_steps", "2"), tmp_path / "ck")
    kept = tmp_path / "ck" / "checkpoint-2"
    before = {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()}
    # The caching stage (Ray Data) wrote rows the feed reads by byte range.
    vae = CacheStore(str(tmp_path / "cache" / "sd1x" / "vae"), "latents")
    index = vae.row_index(vae.read_manifest())
    assert len(index) and (index.offset["latent"] >= 0).all()
    shards = sorted((tmp_path / "cache" / "sd1x" / "vae" / "shards").rglob("*.parquet"))
    for shard in shards:
        shard.write_bytes(shard.read_bytes()[:64])  # cut short, as a failed copy leaves it
    with pytest.raises(ShardReadError, match=r"shard shards/.*\.parquet is missing or unread"):
        fit_in_process(_plan(config, tmp_path / "b"), tmp_path / "ck2", resume_from=kept)
    assert {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()} == before
    # The feed is closed on the error path too.
    assert not [t for t in threading.enumerate() if t.name.startswith("st-ray-feed")]

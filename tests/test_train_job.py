"""jobs/train.py as users run it: --help, --dry-run (no Ray), bad configs, and the demo."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from st_ray.config.options import OPTIONS

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "jobs" / "train.py"


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TRAIN), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _write_run(tmp: Path, example_dataset, **extra) -> Path:
    config = {
        "--model_family": "sdxl",
        "--output_dir": str(tmp / "out"),
        "--data_backend_config": str(tmp / "multidatabackend.json"),
        "--max_train_steps": 100,
        "--lora_rank": 8,
        **extra,
    }
    datasets = [
        {
            "id": "s3-photos",
            "type": "aws",
            "aws_bucket_name": "photos",
            "aws_endpoint_url": "http://127.0.0.1:9",
            "aws_access_key_id": "AKIAEXAMPLEKEYID1234",
            "aws_secret_access_key": "very-secret-key-value",
        },
        {"id": "local", "type": "local", "instance_data_dir": str(example_dataset.images_dir)},
    ]
    (tmp / "config.json").write_text(json.dumps(config))
    (tmp / "multidatabackend.json").write_text(json.dumps(datasets))
    return tmp / "config.json"


def test_help_lists_every_option() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert f"--{option.name} " in result.stdout, option.name
        assert option.help.split()[0] in result.stdout
        for alias in option.aliases:  # deprecated names the loader maps, e.g. checkpointing_steps
            assert f"  --{alias}  alias of --{option.name} (older name)" in result.stdout
    assert "NOT SUPPORTED YET" in result.stdout
    assert "--dry-run" in result.stdout
    assert "--checkpointing_steps  alias of --checkpoint_step_interval" in result.stdout
    assert "--validation_steps  alias of --validation_step_interval" in result.stdout


def test_dry_run_prints_plan_without_ray(tmp_path: Path, example_dataset) -> None:
    config = _write_run(
        tmp_path,
        example_dataset,
        **{"--webhook_config": None, "--mlflow_tracking_uri": "http://user:hunter2@127.0.0.1:5000"},
    )
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from st_ray.jobs.train import main; "
        f"rc = main(['--config', {str(config)!r}, '--dry-run']); "
        "assert 'ray' not in sys.modules, 'dry run imported ray'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "st_ray run plan" in result.stdout
    assert "stabilityai/stable-diffusion-xl-base-1.0" in result.stdout
    assert "s3-photos: aws photos" in result.stdout
    assert "dry run: the configuration is valid" in result.stdout
    assert "hunter2" not in result.stdout  # credentials in a URL are redacted
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_bad_config_exits_2_with_message(tmp_path: Path, example_dataset) -> None:
    config = _write_run(tmp_path, example_dataset, **{"--lora_rnak": 4, "--lr_scheduler": "warp"})
    result = _run("--config", str(config), "--dry-run")
    assert result.returncode == 2
    assert "lora_rnak: unknown option 'lora_rnak'; did you mean 'lora_rank'?" in result.stderr
    assert "lr_scheduler: 'warp' is not allowed; accepted values:" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_flag(tmp_path: Path) -> None:
    result = _run(cwd=tmp_path)
    assert result.returncode == 2
    assert "--config is required" in result.stderr


def test_run_saves_redacted_config(tmp_path: Path, example_dataset) -> None:
    from st_ray.jobs.train import save_resolved_config
    from st_ray.plan import build_plan

    config = _write_run(tmp_path, example_dataset)
    plan = build_plan(config, ["--hub_model_id", "me/model"], {})
    saved = save_resolved_config(plan)
    text = saved.read_text()
    data = json.loads(text)
    assert "very-secret-key-value" not in text
    assert "AKIAEXAMPLEKEYID1234" not in text
    assert data["datasets"][0]["aws_bucket_name"] == "photos"
    assert data["options"]["lora_rank"] == 8
    assert data["options"]["hub_model_id"] == "me/model"


# What st_ray itself prints in a run: the plan, the cache summary, one line per step, where
# the outputs went, and Ray Data's one progress display (a total every 10 s without a
# terminal). Ray prefixes lines of its worker processes with "(ActorName pid=N[, ip=...]) ".
RAY_PREFIX = re.compile(
    r"^(?:\x1b\[\d+m)?\([^()]*(?:\([^()]*\))*[^()]* pid=\d+(?:, ip=[\d.]+)?\)(?:\x1b\[0m)? "
)
OWN_LINES = [
    re.compile(p)
    for p in (
        r"",
        r"st_ray run plan",
        r"  .*",  # plan fields and notes, the output locations
        r"resolved config \(secrets redacted\): .*",
        r"Ray cluster \S+: \d+ nodes?, .*",
        r"cache summary",
        r"dataset +seen +reused +encoded.*",
        r"\S+ +\d+ +\d+ +\d+( +\d+)*",  # a row of the cache summary table
        r"\S+: ignored: \d+ files with other extensions",
        r"text embeddings: .*",
        r"step \d+/\d+ .*",
        r"training finished",
        r"warning: .*",
        # Ray's C++ core worker prints this advisory at ERROR level for Ray Data's and Ray
        # Train's own actors; it cannot be filtered from Python without hiding real errors.
        r"\[\S+ \S+ E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: .* has "
        r"constructor arguments in the object store .*",
        # Ray Data's progress display where there is no terminal (a total every 10 s)
        r"\S+ \S+\tINFO logging_progress\.py:\d+ -- .*",
    )
]


def foreign_lines(output: str) -> list[str]:
    """Lines of a run's output that st_ray did not print (third-party notes and dumps)."""
    lines = [RAY_PREFIX.sub("", line.rstrip()) for line in output.splitlines()]
    return [line for line in lines if not any(p.fullmatch(line) for p in OWN_LINES)]


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """The README's demo command: builds model + data, validates, caches and trains a LoRA
    with local Ray, and says where the outputs are. Its output is st_ray's own: the plan, a
    caching progress display, a line per step and the summary, not library chatter."""
    result = _run("--demo", "--demo-dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr[-3000:]
    foreign = foreign_lines(result.stdout + "\n" + result.stderr)
    assert foreign == [], "\n".join(foreign[:40])
    assert "st_ray run plan" in result.stdout
    assert "cache summary" in result.stdout
    assert "training finished" in result.stdout
    assert (tmp_path / "demo" / "output" / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "demo" / "output" / "mlflow.db").is_file()
    config = json.loads((tmp_path / "demo" / "config" / "config.json").read_text())
    model = Path(config["pretrained_model_name_or_path"])
    assert (model / "model_index.json").is_file()
    saved = tmp_path / "demo" / "output" / "st_ray_resolved_config.json"
    assert json.loads(saved.read_text())["family"] == "sd1x"
    assert (tmp_path / "demo" / "cache" / "text" / "sd1x" / "manifest.json").is_file()
    # a second run reuses the built model and data, and trains again: a fresh run folder
    again = _run("--demo", "--demo-dir", str(tmp_path / "demo"), "--dry-run")
    assert again.returncode == 0, again.stderr[-3000:]
    runs = tmp_path / "demo" / "output" / "ray_runs"
    assert re.search(
        rf"note: run folder {re.escape(str(runs))}/st_ray-sd1x-[0-9_-]+: a fresh run "
        r"\(resume_from_checkpoint none\); earlier runs of 'st_ray-sd1x' are left as they are",
        again.stdout,
    ), again.stdout[-3000:]


def test_foreign_lines_are_told_from_st_rays_own() -> None:
    """The demo test's classifier: the chatter the demo used to print counts as foreign."""
    noise = [
        "(PlacementGroupCleaner pid=4242) Failed to query Ray Train Controller actor state. ",
        "(RayTrainWorker pid=77) Reporting training result 3: TrainingReport(checkpoint=None)",
        "Failed to load /venv/torchao/_C_cutlass_90a.abi3.so: Could not load this library",
        "W1203 09:37:14.252000 15627 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is",
        "[transformers] `CLIPImageProcessor` requires torchvision (not installed); falling back",
    ]
    own = [
        "st_ray run plan",
        "  family        sd1x (unet, lora, standard)",
        "(RayTrainWorker pid=77) step 3/10  epoch 0  loss 0.1234  lr 1.00e-04",
        "photos   19    0       15      3",
        "training finished",
    ]
    assert foreign_lines("\n".join(own)) == []
    assert len(foreign_lines("\n".join(noise + own))) == len(noise)

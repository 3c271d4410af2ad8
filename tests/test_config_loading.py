"""Loading what SimpleTuner users already have, unchanged: config.json (with or without
leading dashes, deprecated aliases), config.toml, config.env, {env:VAR} and {model_family}
placeholders, and command-line overrides, with the documented precedence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from st_ray.config.loader import load_config, parse_overrides
from st_ray.config.options import CANONICAL
from st_ray.plan import build_plan, format_plan

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture()
def simpletuner_dir(tmp_path: Path, example_dataset) -> Path:
    """The SimpleTuner-style fixture, copied, with config.env exporting the data location."""
    target = tmp_path / "config"
    shutil.copytree(FIXTURES / "simpletuner", target)
    with (target / "config.env").open("a") as env:
        env.write(f'export ST_RAY_TEST_DATA="{example_dataset.images_dir}"\n')
        env.write(f"export ST_RAY_TEST_PARQUET={example_dataset.metadata_parquet}\n")
    return target


def test_simpletuner_config_loads_unchanged(
    simpletuner_dir: Path, tmp_path: Path, example_dataset
) -> None:
    environ = {"ST_RAY_TEST_OUTPUT": str(tmp_path / "runs")}
    plan = build_plan(simpletuner_dir / "config.json", (), environ)
    values = plan.options
    raw = json.loads((simpletuner_dir / "config.json").read_text())
    assert len(raw) >= 40
    assert len(plan.config.explicit()) >= 40

    assert plan.family.name == "sdxl"
    assert plan.model == "stabilityai/stable-diffusion-xl-base-1.0"  # from model_flavour
    assert not plan.model_is_local
    assert values["lora_rank"] == 32
    assert values["learning_rate"] == pytest.approx(1e-4)  # "1e-4" string -> float
    assert values["gradient_checkpointing"] is True  # "true" string -> bool
    assert values["validation_resolution"] == "1024x1024,1216x832"
    # deprecated aliases land on the new names
    assert values["checkpoint_step_interval"] == 250
    assert values["validation_step_interval"] == 250
    assert any("checkpointing_steps" in note for note in plan.notes)
    # config.env maps TRAINING_NUM_PROCESSES to Ray Train workers
    assert values["num_processes"] == 2
    assert plan.config.provenance["num_processes"].endswith("config.env")
    # {env:VAR} from the process environment
    assert values["output_dir"] == f"{tmp_path / 'runs'}/sdxl-lora"
    # relative data_backend_config is found beside config.json
    assert plan.dataset_config == simpletuner_dir / "multidatabackend.json"

    by_id = {d.id: d for d in plan.datasets}
    assert set(by_id) == {"photos", "styles-parquet", "text-embeds"}  # disabled one dropped
    photos = by_id["photos"]
    assert photos["crop_style"] == "center" and photos["repeats"] == 2
    assert photos["cache_dir_vae"] == f"{tmp_path / 'runs'}/cache/vae/sdxl/photos"
    assert by_id["text-embeds"]["cache_dir"] == f"{tmp_path / 'runs'}/cache/text/sdxl"
    styles = by_id["styles-parquet"]
    assert styles["resolution_type"] == "area" and styles["resolution"] == 1.0
    # {env:ST_RAY_TEST_PARQUET} from config.env
    assert styles["parquet"]["path"] == str(example_dataset.metadata_parquet)
    # run-wide options fill fields an entry leaves out; an entry's own value wins
    assert styles["minimum_image_size"] == values["minimum_image_size"] == 512
    assert photos["minimum_image_size"] == 768
    # SimpleTuner's own spellings of "off": skip_file_discovery false, clearing off
    assert photos["skip_file_discovery"] == [] and photos["vae_cache_clear_each_epoch"] is False
    # eval_steps_interval without an eval dataset: SimpleTuner runs it, st_ray notes it
    assert any("eval_steps_interval schedules the evaluation loss" in n for n in plan.notes)
    assert "sdxl" in format_plan(plan)


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_family": "sd1x",
                "data_backend_config": "d.json",
                "lora_rank": 8,
                "num_processes": 4,
                "seed": 1,
            }
        )
    )
    (tmp_path / "config.env").write_text("TRAINING_NUM_PROCESSES=2\n")
    loaded = load_config(tmp_path / "config.json", ["--seed", "3"], environ={})
    assert loaded["lora_rank"] == 8  # file over default
    assert loaded["num_processes"] == 2  # config.env over file
    assert loaded["seed"] == 3  # command line over everything
    assert loaded["train_batch_size"] == CANONICAL["train_batch_size"].default
    assert loaded.provenance["seed"] == "command line"
    assert loaded.provenance["train_batch_size"] == "default"


def test_keys_with_and_without_dashes_and_toml(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'model_family = "flux"\ndata_backend_config = "d.json"\n"--lora_rank" = 4\nuse_ema = true\nlearning_rate = 3e-4\n'
    )
    loaded = load_config(tmp_path, [], environ={})  # a folder holding config.toml
    assert loaded["model_family"] == "flux"
    assert loaded["lora_rank"] == 4
    assert loaded["use_ema"] is True
    assert loaded["learning_rate"] == pytest.approx(3e-4)


def test_cli_forms() -> None:
    parsed = parse_overrides(
        [
            "--use_ema",
            "--lora_rank",
            "8",
            "--learning_rate=2e-5",
            "--noise_offset",
            "-0.1",
            "--gradient_checkpointing",
            "false",
            "--validation_prompt",
            "a cat, in a hat",
        ]
    )
    assert parsed == {
        "use_ema": "true",
        "lora_rank": "8",
        "learning_rate": "2e-5",
        "noise_offset": "-0.1",
        "gradient_checkpointing": "false",
        "validation_prompt": "a cat, in a hat",
    }


def test_cli_values_are_typed(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"model_family": "sd1x", "data_backend_config": "d.json", "use_ema": True})
    )
    loaded = load_config(
        tmp_path / "config.json",
        ["--use_ema=false", "--lora_rank", "8", "--report_to", "none", "--local_rank", "-1"],
        environ={},
    )
    assert loaded["use_ema"] is False
    assert loaded["lora_rank"] == 8
    assert loaded["report_to"] == ["none"]
    assert loaded["local_rank"] == -1  # a negative number is a value, not a flag


def test_env_placeholders_come_from_config_env_and_process(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_family": "sd1x",
                "data_backend_config": "d.json",
                "output_dir": "{env:RUNS}/{env:NAME}",
                "validation_prompt": "a {color} cat",  # unknown {words} stay as written
            }
        )
    )
    (tmp_path / "config.env").write_text("export NAME=from-env-file\n")
    loaded = load_config(tmp_path / "config.json", [], environ={"RUNS": "/data/runs"})
    assert loaded["output_dir"] == "/data/runs/from-env-file"
    assert loaded["validation_prompt"] == "a {color} cat"


def test_null_means_default(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_family": "sd1x",
                "data_backend_config": "d.json",
                "lora_rank": None,
                "seed": "null",
            }
        )
    )
    loaded = load_config(tmp_path / "config.json", [], environ={})
    assert loaded["lora_rank"] == 16
    assert loaded["seed"] is None


def test_missing_text_embeds_dataset_is_noted(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "multidatabackend.json").write_text(
        json.dumps([{"id": "only-images", "type": "local", "instance_data_dir": str(images)}])
    )
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_family": "sd1x",
                "data_backend_config": "multidatabackend.json",
                "output_dir": str(tmp_path / "out"),
                "max_train_steps": 5,
            }
        )
    )
    plan = build_plan(tmp_path / "config.json", [], {})
    assert [d.id for d in plan.datasets] == ["only-images"]
    assert any("text_embeds" in note for note in plan.notes)


def test_user_spellings_accepted(tmp_path: Path) -> None:
    """Forms real SimpleTuner configs use: checkpoint names relative to output_dir, bool
    tri-states, space-separated lists, on/off flags, the run-wide instance_prompt spelling."""
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "out" / "checkpoint-500").mkdir(parents=True)
    (tmp_path / "multidatabackend.json").write_text(
        json.dumps([{"id": "a", "type": "local", "instance_data_dir": str(images)}])
    )
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_family": "sd1x",
                "data_backend_config": "multidatabackend.json",
                "output_dir": str(tmp_path / "out"),
                "max_train_steps": 5,
                "resume_from_checkpoint": "checkpoint-500",
                "use_gpu": True,
                "report_to": "mlflow none",
                "caption_strategy": "instance_prompt",
                "instance_prompt": "a photo of sks",
                "tokenizer_max_length": 77,
            }
        )
    )
    plan = build_plan(tmp_path / "config.json", ["--use_ema", "off"], {})
    assert plan.options["use_gpu"] == "true"
    assert plan.options["report_to"] == ["mlflow", "none"]
    assert plan.options["use_ema"] is False
    assert plan.datasets[0]["caption_strategy"] == "instanceprompt"
    assert plan.datasets[0]["instance_prompt"] == "a photo of sks"
    assert plan.to_dict()["options"]["tokenizer_max_length"] == 77  # not taken for a secret


def test_inline_dataset_list(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    inline = [{"id": "inline", "type": "local", "instance_data_dir": str(images)}]
    config = {
        "model_family": "sd1x",
        "data_backend_config": inline,
        "output_dir": str(tmp_path / "o"),
        "max_train_steps": 1,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    plan = build_plan(tmp_path / "config.json", [], {})
    assert [d.id for d in plan.datasets] == ["inline"]

"""Bad input fails before any Ray work, with the file, the key, what is wrong and what is
accepted. Each case starts from a valid minimal run and breaks one thing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from st_ray.config.errors import ConfigError
from st_ray.plan import build_plan

Case = Callable[[dict[str, Any], list[dict[str, Any]], Path], None]


def _base(tmp: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    config = {
        "model_family": "sd1x",
        "model_type": "lora",
        "pretrained_model_name_or_path": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "output_dir": str(tmp / "out"),
        "data_backend_config": str(tmp / "multidatabackend.json"),
        "max_train_steps": 10,
        "optimizer": "adamw_bf16",
    }
    datasets = [
        {"id": "images", "type": "local", "instance_data_dir": str(images)},
        {
            "id": "text",
            "dataset_type": "text_embeds",
            "default": True,
            "type": "local",
            "cache_dir": str(tmp / "cache"),
        },
    ]
    return config, datasets


def _run(tmp: Path, config: dict, datasets: list, overrides=(), environ=None) -> None:
    (tmp / "config.json").write_text(json.dumps(config))
    (tmp / "multidatabackend.json").write_text(json.dumps(datasets))
    build_plan(tmp / "config.json", overrides, environ or {})


def _set(**changes: Any) -> Case:
    def apply(config, datasets, tmp):
        config.update(changes)

    return apply


def _dataset(index: int, **changes: Any) -> Case:
    def apply(config, datasets, tmp):
        datasets[index].update(changes)

    return apply


def _drop(key: str) -> Case:
    def apply(config, datasets, tmp):
        del config[key]

    return apply


def _drop_dataset_field(index: int, key: str) -> Case:
    def apply(config, datasets, tmp):
        del datasets[index][key]

    return apply


# (case id, change, fragments that must all appear in the message)
CASES: list[tuple[str, Case, tuple[str, ...]]] = [
    (
        "unknown key suggests",
        _set(learning_rat=1e-4),
        ("config.json", "learning_rat", "unknown option", "did you mean 'learning_rate'"),
    ),
    (
        "unknown key with dashes",
        _set(**{"--lora_rnak": 8}),
        ("lora_rnak", "did you mean 'lora_rank'"),
    ),
    (
        "unknown key no guess",
        _set(completely_unrelated_thing=1),
        ("completely_unrelated_thing", "unknown option"),
    ),
    (
        "bad choice",
        _set(lr_scheduler="cosine_annealing"),
        ("lr_scheduler", "'cosine_annealing' is not allowed", "'cosine'", "'constant'"),
    ),
    (
        "bad family",
        _set(model_family="sdxxl"),
        ("model_family", "'sdxxl' is not allowed", "'sdxl'"),
    ),
    (
        "unavailable family",
        _set(model_family="ltxvideo"),
        ("model_family", "'ltxvideo' is not supported by st_ray yet", "LTX-Video"),
    ),
    (
        "wrong type int",
        _set(train_batch_size="two"),
        ("train_batch_size", "expected an integer", "'two'"),
    ),
    (
        "wrong type float",
        _set(learning_rate="fast"),
        ("learning_rate", "expected a number", "'fast'"),
    ),
    ("wrong type bool", _set(use_ema="maybe"), ("use_ema", "expected true or false", "'maybe'")),
    ("below minimum", _set(lora_rank=0), ("lora_rank", "below the minimum")),
    (
        "probability above maximum",
        _set(caption_dropout_probability=1.5),
        ("caption_dropout_probability", "above the maximum 1"),
    ),
    (
        "int choice",
        _set(aspect_bucket_alignment=48),
        ("aspect_bucket_alignment", "48 is not allowed", "64"),
    ),
    ("missing family", _drop("model_family"), ("model_family", "is required")),
    (
        "group offload with ramtorch",
        _set(enable_group_offload=True, ramtorch=True),
        ("enable_group_offload", "ramtorch", "mutually exclusive"),
    ),
    (
        "adapter path and config",
        _set(validation_adapter_path="a/b", validation_adapter_config="c.json"),
        ("validation_adapter_path", "validation_adapter_config", "mutually exclusive"),
    ),
    (
        "unsupported option set",
        _set(control=True),
        ("control", "is not supported by st_ray yet"),
    ),
    (
        "push_to_hub without hub_model_id",
        _set(push_to_hub=True),
        ("push_to_hub", "needs hub_model_id"),
    ),
    (
        "hub_model_id that is no repo id",
        _set(push_to_hub=True, hub_model_id="me/my lora"),
        ("hub_model_id", "is not a Hub repository id"),
    ),
    (
        "unknown publishing provider",
        _set(publishing_config=[{"provider": "ftp", "bucket": "b"}]),
        ("publishing_config", "unknown provider 'ftp'", "accepted: s3, backblaze_b2"),
    ),
    (
        "dropbox entry with a misspelt token",
        _set(publishing_config={"provider": "dropbox", "tokn": "sl.secret-dropbox"}),
        ("publishing_config", "entry 1", "unknown key(s) tokn", "credentials are required"),
    ),
    (
        "dropbox refresh token without its app",
        _set(publishing_config={"provider": "dropbox", "refresh_token": "r-secret"}),
        ("publishing_config", "'refresh_token' needs 'app_key'"),
    ),
    (
        "azure entry without credentials",
        _set(publishing_config='[{"provider": "azure_blob", "container": "c"}]'),
        ("publishing_config", "credentials are required: 'connection_string', or 'account_url'"),
    ),
    (
        "azure entry without container, key beside a connection string",
        _set(
            publishing_config=[
                {
                    "provider": "azure",
                    "connection_string": "AccountName=a;AccountKey=c2VjcmV0",
                    "account_key": "c2VjcmV0",
                }
            ]
        ),
        ("publishing_config", "'container' (the blob container's name) is required", "do not also"),
    ),
    (
        "s3 publishing entry without bucket, with a typo",
        _set(publishing_config=[{"provider": "s3", "secret_key": "x", "acess_key": "y"}]),
        ("publishing_config", "'bucket' (the bucket name) is required", "unknown key(s) acess_key"),
    ),
    (
        "publishing_config that is not JSON",
        _set(publishing_config="[{'provider': 's3'}"),
        ("publishing_config", "invalid value", "not shown: it may be secret"),
    ),
    (
        "publishing_config file that does not exist",
        _set(publishing_config="publish.json"),
        ("publishing_config", "neither inline JSON nor an existing JSON file"),
    ),
    (
        "unsupported value",
        _set(report_to="wandb"),
        ("report_to", "'wandb' is not supported by st_ray yet", "mlflow"),
    ),
    (
        "unsupported optimizer-like value",
        _set(attention_mechanism="xformers"),
        ("attention_mechanism", "'xformers' is not supported by st_ray yet"),
    ),
    (
        "prediction type wrong for family",
        _set(model_family="flux", prediction_type="epsilon"),
        ("prediction_type", "'epsilon' does not apply to flux", "flow_matching"),
    ),
    (
        "unknown flavour",
        _set(model_flavour="9000"),
        ("model_flavour", "unknown flavour '9000' for sd1x", "1.5"),
    ),
    (
        "no training length",
        _set(max_train_steps=0, num_train_epochs=0),
        ("max_train_steps", "num_train_epochs"),
    ),
    (
        "guidance range inverted",
        _set(model_family="flux", flux_guidance_min=4.0, flux_guidance_max=1.0),
        ("flux_guidance_min", "greater than flux_guidance_max"),
    ),
    (
        "another family's option",
        _set(sana_complex_human_instruction="", flux_lora_target="mmdit"),
        (
            "sana_complex_human_instruction: only applies to model_family 'sana', not 'sd1x'",
            "flux_lora_target: only applies to model_family 'flux', not 'sd1x'",
        ),
    ),
    (
        "missing local model",
        _set(pretrained_model_name_or_path="./no/such/model"),
        ("pretrained_model_name_or_path", "'./no/such/model' does not exist"),
    ),
    (
        "missing dataset config",
        _set(data_backend_config="/nonexistent/multidatabackend.json"),
        ("data_backend_config", "does not exist"),
    ),
    (
        "missing resume checkpoint",
        _set(resume_from_checkpoint="/nonexistent/checkpoint-5"),
        ("resume_from_checkpoint", "does not exist", "'latest'"),
    ),
    (
        "missing lycoris config file",
        _set(lycoris_config="/nonexistent/lycoris.json"),
        ("lycoris_config", "does not exist"),
    ),
    (
        "bad inline json",
        _set(peft_lora_target_modules='["to_q", '),
        ("peft_lora_target_modules", "malformed inline JSON"),
    ),
    (
        "duplicate dataset id",
        _dataset(1, id="images"),
        ("multidatabackend.json", "duplicate dataset id 'images'"),
    ),
    (
        "missing instance_data_dir",
        _drop_dataset_field(0, "instance_data_dir"),
        ("multidatabackend.json", "instance_data_dir", "is required"),
    ),
    (
        "instance_data_dir missing on disk",
        _dataset(0, instance_data_dir="/nonexistent/images"),
        ("instance_data_dir", "'/nonexistent/images' does not exist"),
    ),
    (
        "unknown dataset field",
        _dataset(0, caption_stratgy="textfile"),
        ("caption_stratgy", "unknown dataset field", "did you mean 'caption_strategy'"),
    ),
    (
        "bad dataset choice",
        _dataset(0, crop_style="diagonal"),
        ("crop_style", "'diagonal' is not allowed", "'center'"),
    ),
    ("bad dataset backend", _dataset(0, type="ftp"), ("type", "'ftp' is not allowed", "'local'")),
    (
        "area resolution in pixels",
        _dataset(0, resolution=1024, resolution_type="area"),
        ("resolution", "megapixels"),
    ),
    ("aws without bucket", _dataset(0, type="aws"), ("aws_bucket_name", "is required")),
    (
        "dangling text_embeds ref",
        _dataset(0, text_embeds="missing-embeds"),
        ("text_embeds", "'missing-embeds'", "text"),
    ),
    ("no image dataset", _dataset(0, disabled=True), ("no enabled image dataset",)),
    (
        "parquet without path",
        _dataset(0, metadata_backend="parquet", parquet={}),
        ("parquet.path",),
    ),
    (
        "optimizer_config key the optimizer lacks",
        _set(optimizer_config="warp_factor=9"),
        ("optimizer", "warp_factor"),
    ),
    (
        "polynomial schedule ending above the start",
        _set(lr_scheduler="polynomial", learning_rate=1e-5, lr_end=1e-4),
        ("lr_scheduler", "lr_end"),
    ),
    (
        "lycoris without its config file",
        _set(lora_type="lycoris", lycoris_config="/nonexistent/lycoris_config.json"),
        ("lora_type", "lora_type 'lycoris' needs a JSON file"),
    ),
    (
        "missing dataset config key",
        _drop("data_backend_config"),
        ("data_backend_config", "is required"),
    ),
    (
        "unknown flavour without model path",
        _set(pretrained_model_name_or_path=None, model_flavour="zzz"),
        ("model_flavour", "unknown flavour 'zzz'"),
    ),
    ("choice typo suggests", _set(lr_scheduler="cosin"), ("lr_scheduler", "did you mean 'cosine'")),
    ("non-finite number", _set(learning_rate="nan"), ("learning_rate", "expected a finite number")),
    (
        "output_dir on object storage",
        _set(output_dir="s3://bucket/out"),
        ("output_dir", "must be a local folder", "run_storage_path"),
    ),
    (
        "validation resolution format",
        _set(validation_resolution="big"),
        ("validation_resolution", "'big' is not a resolution list", "1024x768"),
    ),
    (
        "instanceprompt without prompt",
        _dataset(0, caption_strategy="instanceprompt"),
        ("instance_prompt", "needs an instance_prompt"),
    ),
    (
        "parquet captions without parquet backend",
        _dataset(0, caption_strategy="parquet"),
        ("caption_strategy", "metadata_backend"),
    ),
    (
        "csv file missing",
        _dataset(0, type="csv", csv_file="/nonexistent/list.csv"),
        ("csv_file", "'/nonexistent/list.csv' does not exist"),
    ),
    (
        "unknown parquet field",
        _dataset(0, metadata_backend="parquet", parquet={"path": "x.parquet", "caption_col": "c"}),
        ("parquet.caption_col", "did you mean 'caption_column'"),
    ),
]


@pytest.mark.parametrize(
    "change,fragments", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_named(tmp_path: Path, change: Case, fragments: tuple[str, ...]) -> None:
    config, datasets = _base(tmp_path)
    _run(tmp_path, config, datasets)  # the base itself is valid
    change(config, datasets, tmp_path)
    with pytest.raises(ConfigError) as caught:
        _run(tmp_path, config, datasets)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    _run(tmp_path, config, datasets)
    (tmp_path / "config.json").write_text('{\n  "model_family": "sd1x",\n  "lora_rank": 8,,\n}')
    with pytest.raises(ConfigError, match=r"config.json: malformed JSON at line 3, column 18"):
        build_plan(tmp_path / "config.json", (), {})


def test_malformed_dataset_json_names_file(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    _run(tmp_path, config, datasets)
    (tmp_path / "multidatabackend.json").write_text('[{"id": "x"')
    with pytest.raises(ConfigError, match=r"multidatabackend.json: malformed JSON at line 1"):
        build_plan(tmp_path / "config.json", (), {})


def test_config_must_be_an_object(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected an object of option names to values"):
        build_plan(tmp_path / "config.json", (), {})


def test_missing_env_placeholder(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    config["output_dir"] = "{env:ST_RAY_NOT_SET_ANYWHERE}/out"
    with pytest.raises(ConfigError) as caught:
        _run(tmp_path, config, datasets, environ={})
    assert "output_dir" in str(caught.value)
    assert "ST_RAY_NOT_SET_ANYWHERE is not set" in str(caught.value)


def test_cli_override_errors(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    with pytest.raises(ConfigError) as caught:
        _run(tmp_path, config, datasets, overrides=["--lora_rank", "abc", "--learnign_rate=1"])
    message = str(caught.value)
    assert "command line: lora_rank: expected an integer" in message
    assert "did you mean 'learning_rate'" in message
    assert "2 problems" in message  # every problem reported at once


def test_option_needing_a_value_on_cli(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    with pytest.raises(ConfigError, match="lora_rank: needs a value"):
        _run(tmp_path, config, datasets, overrides=["--lora_rank"])


def test_unsupported_accelerate_flags(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    (tmp_path / "config.env").write_text('ACCELERATE_EXTRA_ARGS="--use_fsdp --multi_gpu"\n')
    with pytest.raises(ConfigError) as caught:
        _run(tmp_path, config, datasets)
    assert "config.env: ACCELERATE_EXTRA_ARGS" in str(caught.value)
    assert "--use_fsdp" in str(caught.value)


def test_config_env_syntax_error(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    (tmp_path / "config.env").write_text("TRAINING_NUM_PROCESSES 2\n")
    with pytest.raises(ConfigError, match=r"config.env: line 1 is not KEY=value"):
        _run(tmp_path, config, datasets)


def test_duplicate_key_through_alias(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    config["checkpointing_steps"] = 10
    config["checkpoint_step_interval"] = 20
    with pytest.raises(ConfigError, match="given twice"):
        _run(tmp_path, config, datasets)


def test_toml_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('model_family = "sd1x"\nlora_rank = = 4\n')
    with pytest.raises(ConfigError, match=r"config.toml: malformed TOML"):
        build_plan(tmp_path / "config.toml", (), {})


def test_output_dir_is_a_file(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    (tmp_path / "afile").write_text("x")
    config["output_dir"] = str(tmp_path / "afile")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        _run(tmp_path, config, datasets)


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    config["webhook_config"] = "https://discord.com/api/webhooks/123/SECRETTOKEN"
    datasets[0]["aws_access_key_id"] = ["AKIAABCDEFGHIJKLMNOP"]
    with pytest.raises(ConfigError) as caught:
        _run(tmp_path, config, datasets)
    message = str(caught.value)
    assert "webhook_config" in message and "aws_access_key_id" in message
    assert "SECRETTOKEN" not in message and "AKIAABCDEFGHIJKLMNOP" not in message


def test_env_file_line_is_not_echoed(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    (tmp_path / "config.env").write_text("export HF_TOKEN = hf_abcdefghijklmnop\n")
    with pytest.raises(ConfigError) as caught:
        _run(tmp_path, config, datasets)
    assert "line 1 is not KEY=value" in str(caught.value)
    assert "hf_abcdefghijklmnop" not in str(caught.value)


def test_env_variable_named_in_message(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    (tmp_path / "config.env").write_text(
        "TRAINING_NUM_PROCESSES=$NUM_GPUS\nTRAINING_NUM_PROCESES=4\n"
    )
    with pytest.raises(ConfigError) as caught:
        _run(tmp_path, config, datasets)
    message = str(caught.value)
    assert "config.env: TRAINING_NUM_PROCESSES: expected an integer" in message
    assert "did you mean 'TRAINING_NUM_PROCESSES'" in message


def test_duplicate_json_key(tmp_path: Path) -> None:
    config, datasets = _base(tmp_path)
    _run(tmp_path, config, datasets)
    text = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(text.replace("{", '{"lora_rank": 8, "lora_rank": 9, ', 1))
    with pytest.raises(ConfigError, match="lora_rank: appears twice in one JSON object"):
        build_plan(tmp_path / "config.json", (), {})

"""The option catalog is internally consistent: one declaration per name, typed defaults
within their choices and ranges, help for everything, a reason for everything unsupported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from st_ray.config.dataset_fields import FIELDS, HUGGINGFACE_FIELDS, PARQUET_FIELDS
from st_ray.config.options import CANONICAL, OPTIONS, REGISTRY, lookup
from st_ray.config.schema import Json, Support
from st_ray.config.values import coerce

ALL = [*OPTIONS, *FIELDS, *PARQUET_FIELDS, *HUGGINGFACE_FIELDS]


def test_catalog_size_and_uniqueness() -> None:
    # SimpleTuner's reference names 355 options; st_ray adds its own Ray/MLflow ones.
    assert len(OPTIONS) >= 355
    assert len(CANONICAL) == len(OPTIONS)
    assert len(REGISTRY) == len(OPTIONS) + sum(len(o.aliases) for o in OPTIONS)


@pytest.mark.parametrize("option", ALL, ids=lambda o: f"{o.group or 'field'}:{o.name}")
def test_option_is_well_formed(option) -> None:
    assert option.help and len(option.help) > 10
    if option.support is Support.NO:
        assert option.note, "an unsupported option must say why"
    if option.default is not None:
        typed = coerce(option, option.default)
        assert typed == ([option.default] if option.multiple else option.default)
    choices = option.choices or ()
    for value, reason in option.unsupported_values:
        assert reason
        assert not choices or value in choices
        assert value != option.default


def test_lookup_accepts_dashes_and_aliases() -> None:
    assert lookup("--learning_rate") is CANONICAL["learning_rate"]
    assert lookup("checkpointing_steps") is CANONICAL["checkpoint_step_interval"]
    assert lookup("validation_steps") is CANONICAL["validation_step_interval"]
    assert lookup("nonexistent") is None


def test_known_reference_options_present() -> None:
    # A sample across concerns; python -m st_ray.reference_check checks them all.
    for name in (
        "model_family",
        "base_model_precision",
        "lora_type",
        "lycoris_config",
        "flux_lora_target",
        "optimizer",
        "lr_scheduler",
        "snr_gamma",
        "flow_schedule_auto_shift",
        "use_ema",
        "vae_cache_scan_behaviour",
        "aspect_bucket_alignment",
        "validation_noise_scheduler",
        "report_to",
        "checkpoints_total_limit",
        "webhook_config",
        "crepa_enabled",
        "scheduled_sampling_max_step_offset",
        "ramtorch",
        "enable_group_offload",
    ):
        assert name in CANONICAL, name


def test_secrets_are_declared() -> None:
    secret = {o.name for o in ALL if o.secret}
    assert {"webhook_config", "aws_secret_access_key", "aws_access_key_id"} <= secret


def test_types_are_known() -> None:
    assert {o.type for o in ALL} <= {bool, int, float, str, Json}


# Read where the loader itself acts on them (dropping entries), not by a later stage.
READ_BY_THE_LOADER = {"disabled": "st_ray/config/datasets.py drops disabled entries"}


def _names_read_outside_config() -> list[re.Pattern[str]]:
    """Every string literal in st_ray/ outside st_ray/config/, as a pattern: f-strings such as
    f"pretrained_{kind}_subfolder" match the names they can form."""
    root = Path(__file__).resolve().parent.parent / "st_ray"
    patterns: set[str] = set()
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0] == "config":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                fixed = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                if len(fixed) < 6 or "_" not in fixed:  # f"{name}" could be any option
                    continue
                parts = [
                    re.escape(v.value) if isinstance(v, ast.Constant) else r"\w+"
                    for v in node.values
                ]
                patterns.add("".join(parts))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                patterns.add(re.escape(node.value))
    return [re.compile(p) for p in patterns if p]


def _only_the_default_is_accepted(option) -> bool:
    """Options whose every other value is refused: their default is what st_ray does."""
    refused = {value for value, _ in option.unsupported_values}
    others = (
        [v for v in option.choices if v != option.default]
        if option.choices
        else ([not option.default] if option.type is bool else None)
    )
    return others is not None and all(v in refused for v in others)


def test_every_supported_option_is_read_by_the_code_that_runs() -> None:
    """An option marked supported must be read outside st_ray/config/ (where it is only
    declared and validated); options marked 'no effect' or unsupported say so instead."""
    literals = _names_read_outside_config()
    unread = [
        option.name
        for option in ALL
        if option.support is Support.YES
        and not option.no_effect
        and not _only_the_default_is_accepted(option)
        and option.name not in READ_BY_THE_LOADER
        and not any(p.fullmatch(option.name) for p in literals)
    ]
    assert unread == [], f"accepted as supported but read nowhere outside st_ray/config: {unread}"

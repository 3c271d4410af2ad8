"""The option catalog is internally consistent: one declaration per name, typed defaults
within their choices and ranges, help for everything, a reason for everything unsupported."""

from __future__ import annotations

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

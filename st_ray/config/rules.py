"""Rules between options: combinations that cannot work together, checked before any Ray work.

Each rule is a small function of the loaded values that reports problems; ``check_rules``
runs them all so a user sees every conflict at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from st_ray.config.errors import ProblemList
from st_ray.config.loader import LoadedConfig
from st_ray.models import FAMILIES
from st_ray.models.family import get_family_module

Values = dict[str, Any]

# Pairs that SimpleTuner documents as mutually exclusive.
MUTUALLY_EXCLUSIVE = (
    ("enable_group_offload", "ramtorch"),
    ("validation_adapter_path", "validation_adapter_config"),
    ("use_dora", "lora_type:lycoris"),
    ("flow_use_uniform_schedule", "flow_use_beta_schedule"),
)


def _is_set(values: Values, spec: str) -> bool:
    name, _, wanted = spec.partition(":")
    if name not in values:
        return False
    value = values[name]
    if wanted:
        return value == wanted
    return value not in (None, False, "", [], {})


def _describe(spec: str) -> str:
    name, _, wanted = spec.partition(":")
    return f"'{name}: {wanted}'" if wanted else f"'{name}'"


def check_exclusive(loaded: LoadedConfig, problems: ProblemList) -> None:
    for first, second in MUTUALLY_EXCLUSIVE:
        if _is_set(loaded.values, first) and _is_set(loaded.values, second):
            name = first.partition(":")[0]
            problems.add(
                loaded.provenance[name],
                name,
                f"{_describe(first)} and {_describe(second)} are mutually exclusive; "
                "set only one of them",
            )


def check_family(loaded: LoadedConfig, problems: ProblemList) -> None:
    values = loaded.values
    family_name = values["model_family"]
    if family_name is None:
        return  # reported as required
    if family_name not in FAMILIES:
        problems.add(
            loaded.provenance["model_family"],
            "model_family",
            f"family '{family_name}' is not available in st_ray yet; available: "
            + ", ".join(FAMILIES),
        )
        return
    family = FAMILIES[family_name]
    flavour = values.get("model_flavour")
    if flavour is not None and flavour in family.refused_flavours:
        problems.add(
            loaded.provenance["model_flavour"],
            "model_flavour",
            f"'{flavour}' of {family_name} is not supported by st_ray: "
            f"{family.refused_flavours[flavour]}; supported: " + ", ".join(family.flavours),
        )
    elif flavour is not None and flavour not in family.flavours:
        problems.add(
            loaded.provenance["model_flavour"],
            "model_flavour",
            f"unknown flavour '{flavour}' for {family_name}; accepted: "
            + ", ".join(family.flavours),
        )
    prediction = values.get("prediction_type")
    if prediction is not None and prediction not in family.prediction_types:
        problems.add(
            loaded.provenance["prediction_type"],
            "prediction_type",
            f"'{prediction}' does not apply to {family_name}; accepted: "
            + ", ".join(family.prediction_types),
        )
    alignment = values.get("aspect_bucket_alignment")
    if alignment and alignment % family.pixel_granularity:
        problems.add(
            loaded.provenance["aspect_bucket_alignment"],
            "aspect_bucket_alignment",
            f"{alignment} is not a multiple of {family.pixel_granularity}, the pixel "
            f"size of one {family_name} latent token; use a multiple of it",
        )
    for key, message in get_family_module(family_name).option_problems(values):
        problems.add(loaded.provenance.get(key, "configuration"), key, message)
    if values.get("flux_lora_target") not in (None, "all") and family_name != "flux":
        problems.add(
            loaded.provenance["flux_lora_target"],
            "flux_lora_target",
            f"only applies to model_family 'flux', not '{family_name}'",
        )


def check_training_length(loaded: LoadedConfig, problems: ProblemList) -> None:
    values = loaded.values
    steps, epochs = values.get("max_train_steps"), values.get("num_train_epochs")
    if not steps and not epochs:
        problems.add(
            "configuration",
            "max_train_steps",
            "neither max_train_steps nor num_train_epochs is set above 0; set one "
            "of them to say how long to train",
        )


def check_ranges(loaded: LoadedConfig, problems: ProblemList) -> None:
    values = loaded.values
    pairs = (
        ("flux_guidance_min", "flux_guidance_max"),
        ("timestep_bias_begin", "timestep_bias_end"),
    )
    for low, high in pairs:
        lo, hi = values.get(low), values.get(high)
        if lo is not None and hi is not None and lo > hi:
            problems.add(
                loaded.provenance[low],
                low,
                f"is {lo}, greater than {high} ({hi}); the range would be empty",
            )
    if values.get("model_type") == "full" and values.get("lora_type") == "lycoris":
        problems.add(
            loaded.provenance["lora_type"],
            "lora_type",
            "'lycoris' only applies to model_type 'lora'",
        )


def check_resume(loaded: LoadedConfig, problems: ProblemList) -> None:
    value = loaded.values.get("resume_from_checkpoint")
    if value is None or str(value).strip().lower() in ("", "latest", "none", "null"):
        return  # start fresh, or resume the newest checkpoint of this run if there is one
    if str(value).startswith(("s3://", "gs://")):
        return
    output_dir = Path(str(loaded.values.get("output_dir") or ".")).expanduser()
    candidates = (Path(str(value)).expanduser(), output_dir / str(value))
    if not any(path.exists() for path in candidates):
        problems.add(
            loaded.provenance["resume_from_checkpoint"],
            "resume_from_checkpoint",
            f"checkpoint '{value}' does not exist (looked in the working directory and "
            "output_dir); accepted: 'latest', a checkpoint directory, or an s3:// URI",
        )


_RESOLUTION_ITEM = re.compile(r"^\d+(\.\d+)?(x\d+)?$")


def check_validation_resolution(loaded: LoadedConfig, problems: ProblemList) -> None:
    value = loaded.values.get("validation_resolution")
    if value is None:
        return
    items = [item.strip() for item in str(value).split(",")]
    if not all(_RESOLUTION_ITEM.match(item) for item in items):
        problems.add(
            loaded.provenance["validation_resolution"],
            "validation_resolution",
            f"'{value}' is not a resolution list; accepted: 1024, 1024x768, or several "
            "separated by commas (1024x1024,1216x832)",
        )


def check_training_setup(loaded: LoadedConfig, problems: ProblemList) -> None:
    """What the optimizer, LR schedule and adapter builders would refuse at the first step,
    asked now so a bad combination fails before any Ray work."""
    from st_ray.train.adapters import check_lora_options
    from st_ray.train.lr_schedules import check_schedule_options
    from st_ray.train.optimizers import OptimizerUnavailable, check_available

    values = loaded.values
    checks = (
        ("optimizer", lambda: check_available(values)),
        (
            "lr_scheduler",
            lambda: check_schedule_options(
                values, world_size=int(values.get("num_processes") or 1)
            ),
        ),
    )
    if values.get("model_type") == "lora":
        base_dir = loaded.config_path.parent if loaded.config_path else None
        checks += (("lora_type", lambda: check_lora_options(values, base_dir)),)
    for key, check in checks:
        try:
            check()
        except (ValueError, OptimizerUnavailable) as err:
            problems.add(loaded.provenance.get(key, "configuration"), key, str(err))


_SINGLE_FILE_SOURCES = (
    "pretrained_model_name_or_path",
    "pretrained_transformer_model_name_or_path",
    "pretrained_unet_model_name_or_path",
)


def check_quantization(loaded: LoadedConfig, problems: ProblemList) -> None:
    """base_model_precision / text_encoder_N_precision that cannot run: a missing package, or
    hardware the run will not have (known when it is CPU-only), before any Ray work."""
    import os

    from st_ray.models.quantize import check_options

    values = loaded.values
    use_gpu = str(values.get("use_gpu") or "auto")
    remote = values.get("ray_address") or os.environ.get("RAY_ADDRESS")
    cpu_only = use_gpu == "false" or (use_gpu == "auto" and not remote and not _local_cuda())
    for key, message in check_options(values, cpu_only=cpu_only):
        problems.add(loaded.provenance.get(key, "configuration"), key, message)
    if cpu_only:
        from st_ray.train.attention import check

        try:
            check(values.get("attention_mechanism"), "cpu")
        except ValueError as err:
            problems.add(
                loaded.provenance.get("attention_mechanism", "configuration"),
                "attention_mechanism",
                str(err),
            )
    for key in _SINGLE_FILE_SOURCES:
        value = str(values.get(key) or "")
        if value.lower().endswith(".gguf"):
            problems.add(
                loaded.provenance.get(key, "configuration"),
                key,
                f"'{value}' is a GGUF checkpoint; loading .gguf files needs the 'gguf' package "
                "and diffusers' single-file loader, which st_ray does not integrate yet: use a "
                "diffusers folder or .safetensors file with base_model_precision instead",
            )


def _local_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def check_placement(loaded: LoadedConfig, problems: ProblemList) -> None:
    from st_ray.placement import check_options

    for key, problem in check_options(loaded.values):
        problems.add(loaded.provenance.get(key, "configuration"), key, problem)


RULES: tuple[Callable[[LoadedConfig, ProblemList], None], ...] = (
    check_exclusive,
    check_family,
    check_training_length,
    check_ranges,
    check_resume,
    check_validation_resolution,
    check_training_setup,
    check_quantization,
    check_placement,
)


def check_rules(loaded: LoadedConfig, problems: ProblemList) -> None:
    for rule in RULES:
        rule(loaded, problems)

"""Rules between options: combinations that cannot work together, checked before any Ray work.

Each rule is a small function of the loaded values that reports problems; ``check_rules``
runs them all so a user sees every conflict at once. The rules here need nothing but the
options; components (model families, optimizers, adapters, placement...) provide the checks
only they can make, and the composition root (``st_ray.plan``) adds them with ``register``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from st_ray.config.errors import ProblemList
from st_ray.config.loader import LoadedConfig

Values = dict[str, Any]
Rule = Callable[[LoadedConfig, ProblemList], None]

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
    for low, high in (("timestep_bias_begin", "timestep_bias_end"),):
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


_SINGLE_FILE_SOURCES = (
    "pretrained_model_name_or_path",
    "pretrained_transformer_model_name_or_path",
    "pretrained_unet_model_name_or_path",
)


def check_single_file_sources(loaded: LoadedConfig, problems: ProblemList) -> None:
    values = loaded.values
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


RULES: tuple[Rule, ...] = (
    check_exclusive,
    check_training_length,
    check_ranges,
    check_resume,
    check_validation_resolution,
    check_single_file_sources,
)
# Checks components provide, added by the composition root.
_REGISTERED: list[Rule] = []


def register(*rules: Rule) -> None:
    """Add component checks, run after the rules above (adding one twice is a no-op)."""
    _REGISTERED.extend(r for r in rules if r not in _REGISTERED)


def registered() -> tuple[Rule, ...]:
    return (*RULES, *_REGISTERED)


def check_rules(loaded: LoadedConfig, problems: ProblemList) -> None:
    for rule in registered():
        rule(loaded, problems)

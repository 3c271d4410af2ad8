"""Refusals of the publishing options at --dry-run, before any Ray work, naming the key."""

from __future__ import annotations

import re

from st_ray.config.errors import ConfigError, ProblemList
from st_ray.config.loader import LoadedConfig
from st_ray.publish.providers import entries_of, problems_of

# The Hub's repo ids: "name" or "namespace/name", letters, digits, "-", "_", ".".
REPO_ID = re.compile(r"^([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def check_publishing(loaded: LoadedConfig, problems: ProblemList) -> None:
    values, where = loaded.values, loaded.provenance
    pushing = values.get("push_to_hub")
    model_id = values.get("hub_model_id")
    if pushing and not model_id:
        problems.add(
            where["push_to_hub"],
            "push_to_hub",
            "needs hub_model_id: the Hub repository to push to, e.g. 'my-name/my-lora'",
        )
    if model_id and pushing and not REPO_ID.match(str(model_id)):
        problems.add(
            where["hub_model_id"],
            "hub_model_id",
            f"'{model_id}' is not a Hub repository id; expected 'name' or 'namespace/name' "
            "(letters, digits, '-', '_', '.')",
        )
    for key in ("push_checkpoints_to_hub", "push_to_hub_background"):
        if values.get(key) and not pushing:
            problems.note(f"{key} has no effect without push_to_hub: true")
    _check_entries(loaded, problems)
    _check_watermark(loaded, problems)


def _check_entries(loaded: LoadedConfig, problems: ProblemList) -> None:
    value = loaded.values.get("publishing_config")
    if not value:
        return
    base_dir = loaded.config_path.parent if loaded.config_path else None
    try:
        entries = entries_of(value, base_dir)
    except ConfigError:
        return  # a missing or malformed file is reported by the plan's path checks
    for message in problems_of(entries):
        problems.add(loaded.provenance["publishing_config"], "publishing_config", message)


def _check_watermark(loaded: LoadedConfig, problems: ProblemList) -> None:
    from st_ray.train import watermark

    if loaded.values.get("enable_watermark") and not watermark.available():
        problems.add(
            loaded.provenance["enable_watermark"],
            "enable_watermark",
            f"needs the '{watermark.PACKAGE}' package (pip install {watermark.PACKAGE}); it is "
            "one of st_ray's dependencies, so reinstalling st_ray brings it",
        )

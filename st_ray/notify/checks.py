"""Checks of the notification options before any Ray work (registered by st_ray.plan)."""

from __future__ import annotations

from pathlib import Path

from st_ray.config.errors import ProblemList
from st_ray.config.loader import LoadedConfig
from st_ray.notify.disk_guard import parse_size
from st_ray.notify.hooks import HOOK_OPTIONS, check_template
from st_ray.notify.webhooks import parse_targets
from st_ray.train.external_validation import problems as external_validation_problems


def check_notify_options(loaded: LoadedConfig, problems: ProblemList) -> None:
    values = loaded.values

    def add(key: str, message: str) -> None:
        problems.add(loaded.provenance.get(key, "configuration"), key, message)

    base = loaded.config_path.parent if loaded.config_path else None
    if values.get("webhook_config") and _readable(values["webhook_config"], base):
        try:
            parse_targets(values["webhook_config"], base)
        except ValueError as err:  # the messages never hold a URL (a secret)
            add("webhook_config", str(err))
    for key in HOOK_OPTIONS:
        if values.get(key):
            wrong = check_template(str(values[key]))
            if wrong:
                add(key, f"the command {wrong}")
    for key, message in external_validation_problems(values):
        add(key, message)
    if values.get("disk_low_threshold") not in (None, ""):
        try:
            parse_size(values["disk_low_threshold"])
        except ValueError as err:
            add("disk_low_threshold", str(err))
    if values.get("disk_low_action") == "script" and not values.get("disk_low_script"):
        add("disk_low_action", "'script' needs disk_low_script, the cleanup command to run")
    if values.get("disk_low_script"):
        wrong = check_template(str(values["disk_low_script"]))
        if wrong and "placeholder" not in wrong:
            add("disk_low_script", f"the command {wrong}")


def _readable(value: object, base: Path | None) -> bool:
    """Inline JSON, or a file that exists (a missing one is reported by the option check)."""
    if not isinstance(value, str):
        return True
    path = Path(value).expanduser()
    return path.is_file() or (base is not None and (base / path).is_file())

"""Which run a training job trains, decided on the driver before any Train worker starts.

Ray Train V2 resumes a run from the latest checkpoint recorded in
``<storage>/<run name>/checkpoint_manager_snapshot.json`` whenever a job uses the same run
name and storage. This module reads that record (local or ``s3://``), so the job can:

- start over in a new run folder for ``resume_from_checkpoint: none`` (or empty / null),
  named ``<run name>-<date>_<time>`` as Ray names its own runs, leaving the earlier run alone;
- stop early, with exit 0, when the run's latest checkpoint is already at the last step;
- refuse to continue a checkpoint under settings that make continuing it wrong (another
  model, adapter shape, optimizer, datasets or resolution), naming each ``old -> new``, and
  list the other settings that changed (more steps, a new learning rate...) in the plan notes.

Each checkpoint manifest carries ``record(plan)``: the settings it was trained with.
Nothing here imports Ray or torch at import time (``--dry-run`` runs it too).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from st_ray import storage
from st_ray.config.errors import ConfigError, Problem
from st_ray.config.options import OPTIONS
from st_ray.config.redact import redact
from st_ray.plan import SECRET_OPTIONS, Plan
from st_ray.train import rolling

# Ray Train V2's record of a run's checkpoints (ray.train.v2 CHECKPOINT_MANAGER_SNAPSHOT_FILENAME).
SNAPSHOT = "checkpoint_manager_snapshot.json"
# resume_from_checkpoint values that start a fresh run; SimpleTuner starts fresh for any empty
# value (its UI offers "" as "None (start from scratch)").
FRESH_VALUES = ("", "none", "null")
# Ray's own run names end in a date like this (ray.train.v2 RunConfig: "ray_train_run-<date>").
_DATE_FORMAT = "%Y-%m-%d_%H-%M-%S"
_DATED = r"-\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}(?:-(\d+))?"
# Options that say where a run goes or comes from, not how it trains: never compared.
_NOT_COMPARED = {
    "output_dir",
    "tracker_run_name",
    "resume_from_checkpoint",
    "run_storage_path",
    "data_backend_config",
    "pretrained_model_name_or_path",  # compared as "base model" (it may come from a flavour)
    "model_family",
}
# Dataset fields that say which images a dataset holds.
_DATASET_SOURCE = ("instance_data_dir", "aws_bucket_name", "aws_data_prefix", "csv_file")
_SHOWN_CHARS = 60


def run_name(plan: Plan) -> str:
    """The Ray Train run name: the same name and storage resume the same run."""
    return str(plan.options.get("tracker_run_name") or f"st_ray-{plan.family.name}")


def resume_mode(options: dict[str, Any]) -> str:
    """'fresh', 'latest' or 'checkpoint' (a named checkpoint) for ``resume_from_checkpoint``."""
    value = options.get("resume_from_checkpoint")
    text = "" if value is None else str(value).strip().lower()
    if text in FRESH_VALUES:
        return "fresh"
    return "latest" if text == "latest" else "checkpoint"


# ---------------------------------------------------------------------------- the record


def identity(plan: Plan) -> dict[str, Any]:
    """Settings a checkpoint is only valid under: what the trained weights are, and what
    they were trained on. A difference refuses the resume."""
    options = plan.options
    found: dict[str, Any] = {
        "model_family": plan.family.name,
        "base model": redact(plan.model),
        "model_type": options.get("model_type"),
    }
    if options.get("model_type") == "lora":
        found["lora_type"] = options.get("lora_type")
        if options.get("lora_type") == "lycoris":
            found["lycoris_config"] = _file_json(options.get("lycoris_config"))
        else:
            found["lora_rank"] = options.get("lora_rank")
            found["lora_alpha"] = options.get("lora_alpha")
    found["optimizer"] = options.get("optimizer")  # its saved state belongs to one optimizer
    # Each dataset's own resolution (inherited from the run's when it sets none) is the one
    # trained at.
    for entry in plan.datasets:
        if entry.dataset_type != "image":
            continue
        where = " ".join(
            str(entry.fields[name]) for name in _DATASET_SOURCE if entry.fields.get(name)
        )
        found[f"dataset '{entry.id}'"] = f"{entry.backend} {where}".strip()
        found[f"dataset '{entry.id}' resolution"] = (
            f"{entry.fields.get('resolution')} ({entry.fields.get('resolution_type')})"
        )
    return _plain(found)


def compared_options(plan: Plan) -> dict[str, Any]:
    """Every other option's value: a difference is fine to continue with, and is noted."""
    covered = set(identity(plan))
    return _plain(
        {
            option.name: plan.options.get(option.name)
            for option in OPTIONS
            if option.name not in _NOT_COMPARED
            and option.name not in covered
            and option.name not in SECRET_OPTIONS
        }
    )


def record(plan: Plan, steps_per_epoch: int) -> dict[str, Any]:
    """What a checkpoint manifest keeps about the run that wrote it."""
    return {
        "identity": identity(plan),
        "options": compared_options(plan),
        "steps_per_epoch": int(steps_per_epoch),  # for runs measured in epochs
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(name, old, new) for every setting whose value differs, in ``new``'s order."""
    names = [*new, *(name for name in old if name not in new)]
    return [(n, old.get(n), new.get(n)) for n in names if old.get(n) != new.get(n)]


def describe(changes: list[tuple[str, Any, Any]], separator: str = ": ") -> list[str]:
    return [f"{name}{separator}{_shown(old)} -> {_shown(new)}" for name, old, new in changes]


# ---------------------------------------------------------------------------- the decision


@dataclass
class RunTarget:
    """The Ray Train run a job trains: its folder and what it starts from."""

    storage: str  # run storage (local folder or s3:// URI)
    name: str  # the Ray Train run name: the folder under ``storage``
    checkpoint: str | None = None  # the checkpoint training continues from
    step: int | None = None  # that checkpoint's step
    finished: bool = False  # the checkpoint is at the last step: nothing to train
    notes: list[str] = field(default_factory=list)

    @property
    def folder(self) -> str:
        return storage.join(self.storage, self.name)

    def finished_message(self) -> str:
        return (
            f"run '{self.name}' already finished at step {self.step} "
            f"({redact(self.checkpoint or '')}); nothing to train. Set resume_from_checkpoint "
            "none, or a new tracker_run_name, to train again"
        )


class RunRefused(ConfigError):
    """Continuing a checkpoint under settings it was not trained with."""

    def __init__(self, run: str, checkpoint: str, changes: list[tuple[str, Any, Any]]):
        self.run = run
        self.checkpoint = checkpoint
        self.changes = changes
        super().__init__(Problem(checkpoint, name, "changed") for name, _, _ in changes)

    def render(self) -> str:
        lines = [
            f"run '{self.run}' cannot continue from {redact(self.checkpoint)}: it was trained "
            "with other settings, and continuing it with these would be wrong",
            *(f"  {line}" for line in describe(self.changes)),
            "To train with the new settings, set resume_from_checkpoint none (a fresh run in a "
            "new run folder) or a new tracker_run_name.",
        ]
        return "\n".join(lines)


def resolve(plan: Plan, *, now: datetime | None = None) -> RunTarget:
    """The run ``plan`` trains in its run storage (see the module docstring).

    Raises ``RunRefused`` when the checkpoint to continue was trained with other settings,
    and ``ConfigError`` when that checkpoint cannot be read.
    """
    base = run_name(plan)
    root = plan.run_storage
    fs, root_path = storage.filesystem(root, _s3(plan))
    runs = run_folders(fs, root_path, base)
    mode = resume_mode(plan.options)
    if mode == "latest" and runs:
        target = RunTarget(root, runs[-1])
        latest = newest_of_both(
            plan, target.folder, latest_checkpoint(fs, f"{root_path.rstrip('/')}/{runs[-1]}")
        )
        if latest is None:
            target.notes.append(
                f"run folder {redact(target.folder)}: no checkpoint yet, from step 0"
            )
            return target
        return _continue(plan, target, storage.join(target.folder, latest))
    target = RunTarget(root, new_run_name(base, runs, now or datetime.now()))
    if mode == "checkpoint":
        # A run folder of its own: Ray Train would hand back a reused folder's own latest
        # checkpoint instead of the one asked for.
        return _continue(plan, target, explicit_checkpoint(plan))
    earlier = f"; earlier runs of '{base}' are left as they are" if runs else ""
    why = "resume_from_checkpoint none" if mode == "fresh" else "no earlier checkpoint"
    target.notes.append(f"run folder {redact(target.folder)}: a fresh run ({why}){earlier}")
    return target


def _continue(plan: Plan, target: RunTarget, checkpoint: str) -> RunTarget:
    manifest = read_manifest(checkpoint, plan)
    target.checkpoint = checkpoint
    target.step = int(manifest["progress"]["global_step"])
    saved = manifest.get("run_identity")
    changes = differences(saved["identity"], identity(plan)) if saved else []
    if changes:
        raise RunRefused(target.name, checkpoint, changes)
    total = _total_steps(plan, saved)
    target.finished = total is not None and target.step >= total
    target.notes.append(
        f"run folder {redact(target.folder)}: continues {redact(checkpoint)} (step {target.step})"
    )
    if target.finished:
        target.notes.append(f"nothing left to train: step {target.step} is the last step")
    if saved is None:
        target.notes.append(
            "that checkpoint has no record of its settings (written before st_ray kept one): "
            "the config is not compared with it"
        )
        return target
    noted = differences(saved["options"], compared_options(plan))
    if noted:
        target.notes.append(
            "changed since that checkpoint, continued with the new values: "
            + "; ".join(describe(noted, separator=" "))
        )
    return target


def _total_steps(plan: Plan, saved: dict[str, Any] | None) -> int | None:
    max_steps = int(plan.options.get("max_train_steps") or 0)
    if max_steps or saved is None:
        return max_steps or None
    from st_ray.train.settings import training_length  # the loop's own rule (imports torch)

    return training_length(plan.options, int(saved["steps_per_epoch"]))[0]


# ---------------------------------------------------------------------------- storage


def run_folders(fs: Any, root: str, run_name: str) -> list[str]:
    """Folders of ``run_name`` under ``root``, oldest first: ``<run_name>`` itself, then
    ``<run_name>-<date>_<time>[-<n>]`` (fresh runs of the same name)."""
    dated = re.compile(re.escape(run_name) + _DATED + "$")
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return []
    names = [Path(str(e["name"]).rstrip("/")).name for e in entries if e.get("type") == "directory"]
    found = []
    for name in names:
        match = dated.match(name)
        if name == run_name:
            found.append(("", 0, name))
        elif match:
            found.append((name[len(run_name) + 1 : len(run_name) + 20], int(match[1] or 1), name))
    return [name for *_, name in sorted(found)]


def new_run_name(run_name: str, taken: list[str], now: datetime) -> str:
    """``run_name`` when no run of that name exists, else ``<run_name>-<date>_<time>``
    (``-2``, ``-3``... when that one is taken too)."""
    if not taken:
        return run_name
    name = f"{run_name}-{now.strftime(_DATE_FORMAT)}"
    count = 1
    candidate = name
    while candidate in taken:
        count += 1
        candidate = f"{name}-{count}"
    return candidate


def latest_checkpoint(fs: Any, run_folder: str) -> str | None:
    """The checkpoint folder name Ray Train resumes ``run_folder`` from (its snapshot's
    latest checkpoint), or None when the run has none."""
    path = f"{run_folder}/{SNAPSHOT}"
    if not fs.exists(path):
        return None
    try:
        snapshot = json.loads(fs.cat_file(path))
    except ValueError as err:
        raise ConfigError(
            [Problem(path, None, f"Ray Train's run record cannot be read ({err})")]
        ) from err
    latest = snapshot.get("latest_checkpoint_result")
    return str(latest["checkpoint_dir_name"]) if latest else None


def newest_of_both(plan: Plan, run_folder: str, ray_latest: str | None) -> str | None:
    """The checkpoint a resume continues: Ray Train's latest (the regular series) or, when it
    is newer, the newest rolling checkpoint (st_ray.train.rolling); a folder name."""
    fs, path = storage.pyarrow_filesystem(run_folder, _s3(plan))
    current = rolling.step_of(ray_latest) if ray_latest else None
    found = rolling.pick_newer(fs, path, current)
    return found.path.rstrip("/").rsplit("/", 1)[-1] if found else ray_latest


def read_manifest(checkpoint: str, plan: Plan) -> dict[str, Any]:
    from st_ray.train.checkpoints import MANIFEST

    location = storage.join(checkpoint, MANIFEST)
    try:
        return json.loads(storage.read_bytes(location, _s3(plan)))
    except FileNotFoundError as err:
        raise ConfigError(
            [
                Problem(
                    redact(checkpoint),
                    "resume_from_checkpoint",
                    f"the checkpoint has no {MANIFEST} (its write did not finish), so it "
                    "cannot be continued; set resume_from_checkpoint none to start a fresh run",
                )
            ]
        ) from err


def explicit_checkpoint(plan: Plan) -> str:
    """The checkpoint ``resume_from_checkpoint`` names: an s3:// URI, a folder, or a folder
    inside output_dir (as the worker resolves it)."""
    value = str(plan.options["resume_from_checkpoint"]).strip()
    if value.startswith("s3://"):
        return value.rstrip("/")
    for candidate in (Path(value).expanduser(), Path(plan.options["output_dir"]) / value):
        if candidate.is_dir():
            return str(candidate.resolve())
    source = plan.config.provenance.get("resume_from_checkpoint", "resume_from_checkpoint")
    raise ConfigError([Problem(source, "resume_from_checkpoint", f"no checkpoint at '{value}'")])


def _s3(plan: Plan) -> storage.S3Settings:
    return storage.S3Settings.from_options(plan.options)


# ---------------------------------------------------------------------------- values


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """JSON values, as a manifest gives them back (tuples become lists...)."""
    return json.loads(json.dumps(values, default=str))


def _file_json(path: Any) -> Any:
    if not path:
        return None
    try:
        return json.loads(Path(str(path)).expanduser().read_text())
    except (OSError, ValueError):
        return str(path)


def _shown(value: Any) -> str:
    text = (
        "(unset)" if value is None else json.dumps(value) if not isinstance(value, str) else value
    )
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."

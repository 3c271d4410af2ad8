"""Checkpoint directories: what a checkpoint holds, and how one is written and read back.

A checkpoint directory holds the trained weights in diffusers layout
(``pytorch_lora_weights.safetensors`` for LoRA, ``unet/`` or ``transformer/`` for full
fine-tunes), ``training_state.pt`` (optimizer, LR scheduler, EMA, RNG, data position) and
``checkpoint_manifest.json``, written last. A directory without a manifest is an interrupted
write and is never resumed from.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

MANIFEST = "checkpoint_manifest.json"
STATE = "training_state.pt"
FORMAT_VERSION = 1


@dataclass
class Progress:
    """Where training stands: enough to continue exactly where it stopped."""

    global_step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch in progress
    batches_in_epoch: int = 0  # this rank's batches consumed in that epoch
    seed: int = 0  # the run's seed (drawn once when the config gives none)
    tracking_run_id: str | None = None  # the MLflow run a resumed run keeps logging to


class IncompleteCheckpoint(Exception):
    """A checkpoint directory whose write did not finish."""


def write_manifest(
    directory: Path,
    progress: Progress,
    *,
    model_type: str,
    family: str,
    files: list[str],
    fingerprint: str,
    derived: dict[str, Any] | None = None,
    run_identity: dict[str, Any] | None = None,
) -> None:
    """``derived``: what the run computed from its options (the learning rate after lr_scale,
    the schedule that ran...), recorded beside the config fingerprint. ``run_identity``: the
    settings the run was trained with (st_ray.train.run_identity), compared with a new config
    before it continues this checkpoint."""
    manifest = {
        "version": FORMAT_VERSION,
        "progress": asdict(progress),
        "model_type": model_type,
        "family": family,
        "files": files,
        "config_fingerprint": fingerprint,
        "derived": derived or {},
        "run_identity": run_identity,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(directory / MANIFEST)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise IncompleteCheckpoint(
            f"{directory} has no {MANIFEST}: its write was interrupted, so it is not resumed"
        )
    manifest = json.loads(path.read_text())
    missing = [name for name in manifest["files"] if not (directory / name).exists()]
    if missing:
        raise IncompleteCheckpoint(f"{directory} is missing {missing} listed in its manifest")
    return manifest


def save_state(directory: Path, state: dict[str, Any]) -> None:
    torch.save(state, directory / STATE)


def load_state(directory: Path) -> dict[str, Any]:
    # Our own file: optimizer states and RNG tensors need full unpickling.
    return torch.load(directory / STATE, map_location="cpu", weights_only=False)


def progress_from(manifest: dict[str, Any]) -> Progress:
    return Progress(**manifest["progress"])


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""Rolling checkpoints (``checkpointing_rolling_steps``, ``checkpoints_rolling_total_limit``):
a second, more frequent series of checkpoints with its own retention.

Ray Train keeps the regular series (``checkpoint-<step>``, reported with ``ray.train.report``;
``checkpoints_total_limit`` is its ``CheckpointConfig.num_to_keep``). The rolling series is never
reported to Ray, so Ray's retention cannot delete it and it cannot push regular checkpoints out
of Ray's count: rank 0 writes each one itself as ``rolling-checkpoint-<step>`` beside Ray's in
the run folder (the same storage, local or s3://), manifest last, then deletes the oldest beyond
``checkpoints_rolling_total_limit``. A resume, by the job (``resume_from_checkpoint: latest``)
or by Ray Train after a worker failure, continues the newest checkpoint of either series.

Imports neither torch nor Ray (the driver lists the series before any work starts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

PREFIX = "rolling-checkpoint-"
MANIFEST = (
    "checkpoint_manifest.json"  # st_ray.train.checkpoints.MANIFEST (that module imports torch)
)
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)$")
_STEP = re.compile(r"(?:^|-)(\d+)$")


def is_due(step: int, every: int) -> bool:
    return every > 0 and step > 0 and step % every == 0


def step_of(name: str) -> int | None:
    """The step in a checkpoint folder name (``checkpoint-40``, ``rolling-checkpoint-45``)."""
    match = _STEP.search(name.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Found:
    step: int
    path: str  # on the series' filesystem


def complete(fs: pafs.FileSystem, folder: str) -> list[Found]:
    """The finished rolling checkpoints in a run folder (with a manifest), oldest first."""
    try:
        entries = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except (FileNotFoundError, OSError):
        return []
    found = []
    for entry in entries:
        match = _NAME.match(entry.base_name)
        if entry.type != pafs.FileType.Directory or not match:
            continue
        if fs.get_file_info(f"{entry.path}/{MANIFEST}").type == pafs.FileType.File:
            found.append(Found(int(match.group(1)), entry.path))
    return sorted(found, key=lambda f: f.step)


def newest(fs: pafs.FileSystem, folder: str) -> Found | None:
    found = complete(fs, folder)
    return found[-1] if found else None


@dataclass
class RollingSeries:
    fs: pafs.FileSystem
    folder: str  # the run folder on ``fs``
    every: int  # checkpointing_rolling_steps
    limit: int  # checkpoints_rolling_total_limit

    def save(self, local: Path, step: int) -> str:
        """Copy a written checkpoint folder into the series; returns where it went."""
        target = f"{self.folder.rstrip('/')}/{PREFIX}{step}"
        if self.fs.get_file_info(target).type != pafs.FileType.NotFound:
            self.fs.delete_dir(target)  # a step written again after a resume
        files = sorted(p for p in local.rglob("*") if p.is_file())
        # The manifest last: a folder without one is an interrupted write, never resumed from.
        files.sort(key=lambda p: p.name == MANIFEST)
        for path in files:
            relative = path.relative_to(local).as_posix()
            parent = f"{target}/{relative}".rsplit("/", 1)[0]
            self.fs.create_dir(parent, recursive=True)
            pafs.copy_files(
                str(path),
                f"{target}/{relative}",
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=self.fs,
            )
        self.prune()
        return target

    def prune(self) -> list[str]:
        """Delete the oldest rolling checkpoints beyond the limit (and unfinished older ones)."""
        found = complete(self.fs, self.folder)
        doomed = [f.path for f in found[: max(0, len(found) - self.limit)]]
        for path in doomed:
            self.fs.delete_dir(path)
        return doomed


def pick_newer(fs: pafs.FileSystem, folder: str, current_step: int | None) -> Found | None:
    """The newest rolling checkpoint in ``folder`` when it is newer than ``current_step`` (the
    checkpoint Ray Train hands back, None when it has none)."""
    found = newest(fs, folder)
    if found is None or (current_step is not None and found.step <= current_step):
        return None
    return found


def download(fs: pafs.FileSystem, path: str, local: Path) -> Path:
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    return local

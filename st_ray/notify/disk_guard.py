"""The free-space guard before each checkpoint save (``disk_low_threshold``, ``disk_low_action``,
``disk_low_script``).

Checked on every local filesystem a checkpoint passes through: the staging folder the worker
writes it to (its temp folder) and the run storage folder when that is local (an s3:// run
storage has no free space to measure). Below the threshold:

- ``stop``: the run ends with ``DiskSpaceLow`` before writing anything, so the last good
  checkpoint stays as it was;
- ``wait``: check again every 30 s, logging each time, until there is room (possibly forever);
- ``script``: run ``disk_low_script`` (it must finish), then check again; still too little
  room, or a failed script, ends the run as ``stop`` does.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ACTIONS = ("stop", "wait", "script")
POLL_SECONDS = 30.0
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def parse_size(text: str | int) -> int:
    """Bytes in a size such as '100G', '50M', '1T', '500K', '1.5G' or plain bytes (binary
    units, as df -h shows them). ValueError for anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(
            f"{text!r} is not a size; use a number of bytes or one with K, M, G, T (e.g. '100G')"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(size: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.1f}{unit}" if unit != "B" else f"{int(size)}B"
        size /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: Path) -> int:
    """Free space of the filesystem that holds ``path`` (its nearest existing folder)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


class DiskSpaceLow(RuntimeError):
    """Too little free space to save a checkpoint; the run stops before writing it."""


@dataclass
class DiskGuard:
    threshold: int  # bytes
    action: str  # stop | wait | script
    script: str | None
    log: Callable[[str], None]
    poll_seconds: float = POLL_SECONDS
    sleep: Callable[[float], None] = time.sleep
    free: Callable[[Path], int] = free_bytes

    def check(self, folders: Sequence[Path], *, step: int, last_checkpoint: str | None) -> None:
        """Return when every folder has ``threshold`` bytes free; act as configured if not."""
        low = self._low(folders)
        if not low:
            return
        if self.action == "wait":
            while low:
                self.log(
                    f"disk_low_threshold: {self._describe(low)}; checkpoint at step {step} "
                    f"waits, checking again in {self.poll_seconds:g} s"
                )
                self.sleep(self.poll_seconds)
                low = self._low(folders)
            self.log(f"disk_low_threshold: space is back; saving the checkpoint at step {step}")
            return
        why = ""
        if self.action == "script":
            ok = self._run_script()
            low = self._low(folders)
            if not low:
                return
            why = " after disk_low_script" + ("" if ok else " failed")
        kept = f"; the last good checkpoint is {last_checkpoint}" if last_checkpoint else ""
        raise DiskSpaceLow(
            f"disk_low_threshold: {self._describe(low)}{why}; training stopped before saving "
            f"the checkpoint at step {step}{kept}. Free some space (or lower disk_low_threshold) "
            "and start the job again to continue"
        )

    def _low(self, folders: Sequence[Path]) -> list[tuple[Path, int]]:
        found = [(f, self.free(f)) for f in folders]
        return [(f, free) for f, free in found if free < self.threshold]

    def _describe(self, low: list[tuple[Path, int]]) -> str:
        where = ", ".join(f"{format_size(free)} free on {folder}" for folder, free in low)
        return f"{where}, below {format_size(self.threshold)}"

    def _run_script(self) -> bool:
        assert self.script
        self.log(f"disk_low_script: running {self.script}")
        try:
            done = subprocess.run(
                shlex.split(self.script),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            )
        except OSError as err:
            self.log(f"disk_low_script: cannot start it ({err.strerror})")
            return False
        for line in done.stdout.splitlines():
            self.log(f"[disk_low_script] {line}")
        if done.returncode != 0:
            self.log(f"disk_low_script: exited with {done.returncode}")
        return done.returncode == 0

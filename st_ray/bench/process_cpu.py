"""CPU seconds of the processes a local Ray instance runs beside the training worker.

A local Ray instance's processes (GCS, raylet, dashboard and its agents, log monitor, Ray
Train's controller actors, idle workers) are all descendants of the process that started it.
``CpuSampler`` records every descendant's CPU time (user + system) a few times a second in a
thread; ``window_cpu`` gives each process's CPU seconds between two moments (the steady-state
steps of a run), by label. These figures do not depend on how busy the machine is the way
step times do: they say what competes with torch's threads for the CPUs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

Sample = tuple[float, dict[int, tuple[str, float]]]  # (time.time(), pid -> (label, CPU s))


def process_label(name: str, cmdline: Sequence[str]) -> str:
    """A short name for a process: a Ray worker's title (``ray::TrainController``, its method
    dropped), a Python script's file name, else the executable's name."""
    title = " ".join(cmdline).strip()
    if title.startswith("ray::"):
        return title.split()[0].split(".")[0]
    if not cmdline:
        return name
    if "python" in os.path.basename(cmdline[0]):
        scripts = [arg for arg in cmdline[1:3] if arg.endswith(".py")]
        if scripts:
            return os.path.basename(scripts[0])
    return os.path.basename(cmdline[0].split()[0])


def window_cpu(samples: Sequence[Sample], start: float, end: float) -> dict[str, float]:
    """CPU seconds per label between the last sample at or before ``start`` (the first one
    when none is) and the first sample at or after ``end`` (the last one when none is). A
    process born inside the window counts from 0; one that ended inside it counts up to its
    last sample."""
    if not samples:
        return {}
    before = [s for s in samples if s[0] <= start]
    after = [s for s in samples if s[0] >= end]
    first = before[-1] if before else samples[0]
    last = after[0] if after else samples[-1]
    seen: dict[int, tuple[str, float]] = {}
    for stamp, processes in samples:
        if first[0] <= stamp <= last[0]:
            seen.update(processes)
    out: dict[str, float] = {}
    for pid, (label, cpu) in seen.items():
        used = cpu - first[1][pid][1] if pid in first[1] else cpu
        out[label] = out.get(label, 0.0) + max(used, 0.0)
    return out


@dataclass
class CpuSampler:
    """Samples this process's descendants every ``interval_s`` while running (a context
    manager)."""

    interval_s: float = 0.5
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self._sample())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample())
            self._stop.wait(self.interval_s)

    def _sample(self) -> Sample:
        import psutil

        processes: dict[int, tuple[str, float]] = {}
        for process in psutil.Process().children(recursive=True):
            try:
                times = process.cpu_times()
                label = process_label(process.name(), process.cmdline())
            except psutil.Error:
                continue  # ended meanwhile
            processes[process.pid] = (label, times.user + times.system)
        return time.time(), processes

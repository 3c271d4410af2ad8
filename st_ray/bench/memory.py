"""Memory of a benchmark session: the summed RSS of the driver and its Ray processes, and
its peak sampled in the background."""

from __future__ import annotations

import threading

import psutil

SAMPLE_EVERY_S = 0.05


def _session_processes() -> list[psutil.Process]:
    """The driver and every process below it. A local Ray instance started by this process
    (ours or a test fixture's) has its raylet, and so all its workers, in that tree; when Ray
    was started elsewhere, its ``ray::`` worker processes are added instead."""
    me = psutil.Process()
    tree = [me, *me.children(recursive=True)]
    if any(_name(p) == "raylet" for p in tree):
        return tree
    mine = {p.pid for p in tree}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["pid"] not in mine and cmdline and cmdline[0].startswith("ray::"):
            tree.append(proc)
    return tree


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:  # exited since the listing
        return ""


def session_rss() -> int:
    """Summed RSS in bytes; shared pages (the object store's) count in every process mapping
    them, so this over- rather than under-states memory."""
    total = 0
    for proc in _session_processes():
        try:
            total += proc.memory_info().rss
        except psutil.Error:  # exited between the listing and the read
            continue
    return total


class PeakRss:
    """Samples ``session_rss`` in a background thread every SAMPLE_EVERY_S seconds."""

    def __init__(self) -> None:
        self.peak = session_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.peak = max(self.peak, session_rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, session_rss())

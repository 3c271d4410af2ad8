"""Where a run's uploads are queued, run (in the background or not) and waited for.

One ``Publisher`` per run lives on rank 0's worker: the final output and each checkpoint are
written there (a Ray Train checkpoint folder is local to that worker until Ray moves it to run
storage, and the driver may be on another node), so uploads start where the files are.

- ``checkpoint``: with ``push_checkpoints_to_hub``, the checkpoint's weights and manifest go to
  the Hub under ``checkpoint-<step>/``; in the background they are first hard-linked into a
  staging folder, since Ray deletes the checkpoint folder once it has taken it.
- ``final``: the final output folder (weights, model card, validation images) to the Hub
  (``push_to_hub``) and to every ``publishing_config`` target.
- ``wait``: blocks until every queued upload has ended. Each failure is reported once when it
  happens; a checkpoint's failure does not stop training, the final output's is raised here as
  a ``PublishError`` naming the destination (the local files stay intact).

After each successful upload every callable in ``on_uploaded`` is called with an ``Uploaded``
(local folder, remote URL, step, target, kind): the place for ``post_upload_script``. A
callback that raises is reported and ignored.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from st_ray.publish.hub import HubRepo, PublishError
from st_ray.publish.providers import entries_of, targets_of
from st_ray.publish.retry import Backoff, say, short


@dataclass(frozen=True)
class Uploaded:
    """One upload that finished: what ``on_uploaded`` callbacks receive."""

    local: Path  # the folder uploaded (for a checkpoint: its staged copy, gone afterwards)
    remote: str  # URL or URI of the uploaded folder at the target
    step: int
    target: str  # "hub" or the provider ("s3", "backblaze_b2", "azure_blob", "dropbox", ...)
    kind: str  # "checkpoint" or "final"


class Target(Protocol):
    def push(
        self, folder: Path, path_in_target: str, files: Sequence[str] | None, backoff: Backoff
    ) -> str: ...


@dataclass
class _HubTarget:
    repo: HubRepo

    def push(
        self, folder: Path, path_in_target: str, files: Sequence[str] | None, backoff: Backoff
    ) -> str:
        message = f"st_ray {path_in_target or 'final model'}"
        return self.repo.push_folder(folder, path_in_target, message, files, backoff)


@dataclass
class _Job:
    target: Any
    target_name: str
    folder: Path
    path_in_target: str
    files: Sequence[str] | None
    step: int
    kind: str
    cleanup: bool = False  # a staged copy, removed after its uploads


@dataclass
class Publisher:
    hub: HubRepo | None = None  # push_to_hub
    push_checkpoints: bool = False
    providers: list[Any] = field(default_factory=list)  # publishing_config targets
    background: bool = False
    backoff: Backoff = field(default_factory=Backoff)
    on_uploaded: list[Callable[[Uploaded], None]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _fatal: list[str] = field(default_factory=list)
    _queue: queue.Queue | None = None
    _thread: threading.Thread | None = None
    _pending: dict[Path, int] = field(default_factory=dict)  # staged folder -> jobs left
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_plan(cls, plan: Any) -> Publisher | None:
        """The run's publisher; a publishing_config file is relative to the config file."""
        config_path = plan.config.config_path
        return cls.from_options(plan.options, config_path.parent if config_path else None)

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], base_dir: Path | None = None
    ) -> Publisher | None:
        """The run's publisher, or None when nothing is published."""
        hub = HubRepo.from_options(options) if options.get("push_to_hub") else None
        providers = targets_of(entries_of(options.get("publishing_config"), base_dir))
        if hub is None and not providers:
            return None
        return cls(
            hub=hub,
            push_checkpoints=bool(options.get("push_checkpoints_to_hub")) and hub is not None,
            providers=providers,
            background=bool(options.get("push_to_hub_background")),
        )

    # -- what the run calls -------------------------------------------------------------------
    def checkpoint(self, directory: Path, files: Sequence[str], step: int) -> None:
        """Push a checkpoint's ``files`` (weights, manifest) when ``push_checkpoints_to_hub``."""
        if not (self.push_checkpoints and self.hub):
            return
        folder, staged = Path(directory), False
        if self.background:  # Ray removes the folder after report(): upload from hard links
            folder, staged = stage(Path(directory), files), True
        path = f"checkpoint-{step}"
        hub = _HubTarget(self.hub)
        self._submit([_Job(hub, "hub", folder, path, list(files), step, "checkpoint", staged)])

    def final(self, output_dir: Path, step: int) -> None:
        """Push the final output folder to the Hub and every publishing_config target."""
        output_dir = Path(output_dir)
        jobs = []
        if self.hub is not None:
            jobs.append(_Job(_HubTarget(self.hub), "hub", output_dir, "", None, step, "final"))
        for target in self.providers:
            jobs.append(_Job(target, target.name, output_dir, output_dir.name, None, step, "final"))
        self._submit(jobs)

    def wait(self) -> None:
        """Block until every upload has ended; raise the final output's failures."""
        if self._thread is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = self._queue = None
        if self._fatal:
            raise PublishError("; ".join(self._fatal))

    # -- inside ---------------------------------------------------------------------------------
    def _submit(self, jobs: list[_Job]) -> None:
        with self._lock:
            for job in jobs:
                if job.cleanup:
                    self._pending[job.folder] = self._pending.get(job.folder, 0) + 1
        if not self.background:
            for job in jobs:
                self._run(job)
            return
        if self._thread is None:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._drain, name="st_ray-publish", daemon=True)
            self._thread.start()
        for job in jobs:
            assert self._queue is not None
            self._queue.put(job)

    def _drain(self) -> None:
        assert self._queue is not None
        while (job := self._queue.get()) is not None:
            self._run(job)

    def _run(self, job: _Job) -> None:
        label = f"{job.kind} {job.path_in_target or job.folder.name} to {job.target_name}"
        try:
            remote = job.target.push(job.folder, job.path_in_target, job.files, self.backoff)
            say(f"published {label}: {remote}")
            target = "hub" if job.target_name == "hub" else job.target.provider
            uploaded = Uploaded(job.folder, remote, job.step, target, job.kind)
            for callback in self.on_uploaded:
                try:
                    callback(uploaded)
                except Exception as err:  # a hook never stops the uploads
                    say(f"after-upload callback failed for {label}: {short(err)}")
        except Exception as err:
            message = str(err) if isinstance(err, PublishError) else short(err)
            what = f"publishing {label} failed: {message}"
            say(what)  # reported once, here
            self.failures.append(what)
            if job.kind == "final":
                self._fatal.append(what)
        finally:
            self._release(job)

    def _release(self, job: _Job) -> None:
        if not job.cleanup:
            return
        with self._lock:
            self._pending[job.folder] -= 1
            done = self._pending[job.folder] == 0
            if done:
                del self._pending[job.folder]
        if done:
            shutil.rmtree(job.folder, ignore_errors=True)


def stage(directory: Path, files: Sequence[str]) -> Path:
    """A private copy of ``files`` of ``directory``: hard links where the filesystem allows
    (no bytes copied), copies elsewhere."""
    staged = Path(tempfile.mkdtemp(prefix="st_ray-publish-"))
    for name in files:
        source, target = directory / name, staged / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    return staged

"""What every publishing target shares: the files of a folder to upload, and failure messages
that can never carry the target's secrets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from st_ray.config.redact import REDACTED
from st_ray.publish.hub import PublishError
from st_ray.publish.retry import short


def files_in(folder: Path, files: Sequence[str] | None = None) -> list[str]:
    """``files`` when given, else every file under ``folder`` (recursively), as sorted POSIX
    paths relative to it."""
    if files:
        return list(files)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def failure(target: str, error: BaseException, secrets: Iterable[str | None]) -> PublishError:
    """A ``PublishError`` naming ``target``, with the error's first line (already masked for
    token-like words) and every one of ``secrets`` masked too: an SDK may echo a connection
    string, a key or a token in its message."""
    message = short(error)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        if len(secret) >= 4:
            message = message.replace(secret, REDACTED)
    return PublishError(f"{target}: {message}")


def key_problems(entry: Mapping[str, object], keys: frozenset[str], where: str) -> list[str]:
    """A provider entry's unknown keys and non-string values, naming keys, never values."""
    found = []
    unknown = sorted(set(entry) - keys)
    if unknown:
        found.append(
            f"{where}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(sorted(keys))}"
        )
    for key in sorted(keys - {"provider"}):
        if key in entry and not isinstance(entry[key], str):
            found.append(f"{where}: '{key}' must be a string")
    return found

"""Readers for the files SimpleTuner users already have: config.json, config.toml, config.env.

Each reader returns plain Python data and raises ``ConfigError`` naming the file (and, for
syntax errors, the line and column) when the file cannot be used.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

from st_ray.config.errors import ConfigError, Problem


def read_json(path: Path, what: str = "JSON file") -> Any:
    text = _read_text(path, what)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as err:
        raise ConfigError(
            [
                Problem(
                    str(path),
                    None,
                    f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}",
                )
            ]
        ) from None
    except _DuplicateKey as dup:
        raise ConfigError(
            [Problem(str(path), str(dup), "appears twice in one JSON object; keep one")]
        ) from None


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def read_toml(path: Path) -> dict[str, Any]:
    text = _read_text(path, "TOML file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([Problem(str(path), None, f"malformed TOML: {err}")]) from None


_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a shell-style ``KEY=value`` file (``export`` and quotes allowed, no expansion)."""
    values: dict[str, str] = {}
    for lineno, raw in enumerate(_read_text(path, "env file").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if not match:
            # The line is not echoed: it may hold a secret.
            raise ConfigError(
                [Problem(str(path), None, f"line {lineno} is not KEY=value (no spaces around '=')")]
            )
        key, rest = match.groups()
        try:
            parts = shlex.split(rest, comments=True)
        except ValueError as err:
            raise ConfigError([Problem(str(path), key, f"line {lineno}: {err}")]) from None
        values[key] = " ".join(parts)
    return values


def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise ConfigError([Problem(str(path), None, f"{what} does not exist")])
    if path.is_dir():
        raise ConfigError([Problem(str(path), None, f"expected a {what}, found a directory")])
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([Problem(str(path), None, f"cannot read {what}: {err}")]) from None

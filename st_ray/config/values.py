"""Turning raw values (JSON, TOML, env strings, CLI strings) into typed option values.

Pure functions: each raises ``ValueError`` with a message that says what is accepted; the
caller adds the file and key.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from st_ray.config.errors import closest, format_choices
from st_ray.config.schema import Json, Option

TRUE_WORDS = {"true", "yes", "on", "1"}
FALSE_WORDS = {"false", "no", "off", "0"}
_NULL = {"none", "null", ""}


def coerce(option: Option, raw: Any) -> Any:
    """The typed value of ``raw`` for ``option``; None means "unset" (use the default)."""
    if raw is None or (
        isinstance(raw, str) and raw.strip().lower() in _NULL and option.type is not str
    ):
        return None
    if option.multiple:
        items = _as_list(raw)
        return [_check(option, _scalar(option, item)) for item in items]
    return _check(option, _scalar(option, raw))


def safe_error(option: Option, key: str, err: ValueError) -> str:
    """The coercion error to show, unless the value may be a secret: then it is not echoed."""
    from st_ray.config.redact import is_secret_key

    if option.secret or is_secret_key(key) or is_secret_key(option.name):
        kind = option.type.__name__
        return f"invalid value for a {kind} field (value not shown: it may be secret)"
    return str(err)


def _as_list(raw: Any) -> list[Any]:
    if isinstance(raw, list | tuple):
        return list(raw)
    if isinstance(raw, str):
        # SimpleTuner writes lists comma- or space-separated ("vae aspect", "mlflow,none").
        return [part for part in re.split(r"[,\s]+", raw) if part]
    return [raw]


def _scalar(option: Option, raw: Any) -> Any:
    kind = option.type
    if kind is bool:
        return to_bool(raw)
    if kind is int:
        return _to_int(raw, option)
    if kind is float:
        return _to_float(raw)
    if kind is Json:
        return _to_json(raw)
    if isinstance(raw, bool) and option.choices and "true" in option.choices:
        return str(raw).lower()  # tri-state options such as use_gpu: auto / true / false
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"expected a string, got {type(raw).__name__} {raw!r}")
    return str(raw)


def to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _to_int(raw: Any, option: Option) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"expected an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        text = raw.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None and number.is_integer():
            return int(number)
    choices = f" (one of {format_choices(option.choices)})" if option.choices else ""
    raise ValueError(f"expected an integer{choices}, got {raw!r}")


def _to_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"expected a number, got {raw!r}")
    number = None
    if isinstance(raw, int | float):
        number = float(raw)
    elif isinstance(raw, str):
        with contextlib.suppress(ValueError):
            number = float(raw.strip())
    if number is None:
        raise ValueError(f"expected a number, got {raw!r}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return number


def _to_json(raw: Any) -> Any:
    """Inline objects/arrays stay as they are; a string holding JSON is parsed; any other
    string is kept as a path to a JSON file (checked for existence during validation)."""
    if isinstance(raw, dict | list):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith(("{", "[")):
            try:
                return json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"malformed inline JSON at column {err.colno}: {err.msg}"
                ) from None
        return text
    raise ValueError(f"expected a JSON object/array or a path to a JSON file, got {raw!r}")


def _check(option: Option, value: Any) -> Any:
    if option.choices is not None and value not in option.choices:
        guess = closest(str(value), [str(c) for c in option.choices if c is not None])
        hint = f" (did you mean {guess!r}?)" if guess else ""
        raise ValueError(
            f"{value!r} is not allowed{hint}; accepted values: {format_choices(option.choices)}"
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if option.minimum is not None and value < option.minimum:
            raise ValueError(f"{value!r} is below the minimum {option.minimum:g}")
        if option.maximum is not None and value > option.maximum:
            raise ValueError(f"{value!r} is above the maximum {option.maximum:g}")
    return value


_PLACEHOLDER = re.compile(r"\{(env:[A-Za-z_][A-Za-z0-9_]*|[a-z_]+)\}")


def expand_placeholders(value: Any, env: Mapping[str, str], names: Mapping[str, str]) -> Any:
    """Replace ``{env:VAR}`` and ``{name}`` (e.g. ``{model_family}``) inside strings, recursively.

    Unknown ``{words}`` are left alone (prompts may legitimately contain braces); a missing
    environment variable is an error.
    """
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            token = match.group(1)
            if token.startswith("env:"):
                var = token[4:]
                if var not in env:
                    raise ValueError(f"environment variable {var} is not set (used as {{{token}}})")
                return env[var]
            return names.get(token, match.group(0))

        return _PLACEHOLDER.sub(substitute, value)
    if isinstance(value, list):
        return [expand_placeholders(v, env, names) for v in value]
    if isinstance(value, dict):
        return {k: expand_placeholders(v, env, names) for k, v in value.items()}
    return value

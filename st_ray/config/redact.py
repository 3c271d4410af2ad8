"""Removing secrets from anything that is printed, logged or saved.

A value is secret when its option or field is declared ``secret``, when its key names a
credential (token, password, secret, access key, webhook...), or when it is a URL that carries
credentials. Redaction is recursive over dicts and lists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "***REDACTED***"

# Whole words of a key name (split on "_"), so "tokenizer_max_length" is not a secret.
_SECRET_KEY = re.compile(
    r"(^|_)(tokens?|secrets?|password|passwd|access_key|api_key|apikey|credentials?|webhook"
    r"|private_key|account_key|connection_string)($|_)",
    re.IGNORECASE,
)
_URL_CREDENTIALS = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
_TOKEN_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{8,}|AKIA[0-9A-Z]{12,}|sk-[A-Za-z0-9]{16,})$")


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact(value: Any, secret_keys: Iterable[str] = ()) -> Any:
    """A copy of ``value`` with secrets replaced; ``secret_keys`` adds declared-secret names."""
    declared = set(secret_keys)
    return _redact(value, declared)


def _redact(value: Any, declared: set[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: (REDACTED if _hides(k, v, declared) else _redact(v, declared))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v, declared) for v in value]
    if isinstance(value, str):
        if _TOKEN_VALUE.match(value.strip()):
            return REDACTED
        return _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{REDACTED}@", value)
    return value


def _hides(key: Any, value: Any, declared: set[str]) -> bool:
    if not isinstance(value, str | dict | list) or not value:
        return False  # numbers, flags and unset values cannot hold a secret
    return isinstance(key, str) and (key.lstrip("-") in declared or is_secret_key(key))

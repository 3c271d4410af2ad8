"""Configuration errors written for people: where, which key, what is wrong, what is accepted."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    source: str  # file path, "command line", "config.env", ...
    key: str | None  # option or dataset field, None for file-level problems
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}" if self.key else self.source
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """One or more problems found while loading or validating a configuration.

    All problems found in one pass are reported together, so a user fixes them in one go.
    """

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.problems) == 1:
            return f"invalid configuration: {self.problems[0]}"
        lines = [f"invalid configuration ({len(self.problems)} problems):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The known name a user most likely meant, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key_message(name: str, candidates: Iterable[str], what: str = "option") -> str:
    guess = closest(name, candidates)
    hint = f"; did you mean '{guess}'?" if guess else ""
    return f"unknown {what} '{name}'{hint}"


def format_choices(choices: Iterable[object]) -> str:
    return ", ".join(repr(c) if isinstance(c, str) else str(c) for c in choices if c is not None)


class ProblemList:
    """Collects problems while validating, and raises them together; also collects notes
    (things accepted that a user should know about)."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.notes: list[str] = []

    def add(self, source: str, key: str | None, message: str) -> None:
        self.items.append(Problem(source, key, message))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

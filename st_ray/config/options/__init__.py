"""The option catalog: every SimpleTuner option plus st_ray's own, declared once.

Each sibling module declares the options of one concern as ``OPTIONS`` (a list of
``Option``) and its ``GROUP`` title: the core catalog. Components declare the options they
own themselves (a model family its ``flux_*`` or ``sana_*`` options) and the composition root
(``st_ray.plan``) adds them with ``contribute``, and fills in choices only a component knows
(``set_choices``, e.g. the model_family names). ``REGISTRY`` maps every name and alias to its
option; ``OPTIONS``, ``REGISTRY`` and ``CANONICAL`` are updated in place, so modules that
imported them see the complete catalog once the root has run.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from st_ray.config.schema import Option

_MODULES = (
    "model",
    "adapters",
    "training",
    "data",
    "validation",
    "tracking",
    "cluster",
    "publishing",
    "experimental",
)


def _load() -> list[Option]:
    options: list[Option] = []
    for module_name in _MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        options.extend(dataclasses.replace(o, group=module.GROUP) for o in module.OPTIONS)
    return options


# The options st_ray itself declares, before any component contributed its own.
CORE_OPTIONS: tuple[Option, ...] = tuple(_load())
OPTIONS: list[Option] = []
REGISTRY: dict[str, Option] = {}
CANONICAL: dict[str, Option] = {}
# Who contributed which options (owner -> names), for messages and the composition check.
OWNERS: dict[str, tuple[str, ...]] = {}


def _index(option: Option) -> None:
    for key in (option.name, *option.aliases):
        if key in REGISTRY:
            raise RuntimeError(f"option {key!r} is declared twice in the catalog")
        REGISTRY[key] = option
    CANONICAL[option.name] = option
    OPTIONS.append(option)


for _option in CORE_OPTIONS:
    _index(_option)


def contribute(owner: str, options: Iterable[Option], group: str) -> None:
    """Add the options ``owner`` declares (under the --help section ``group``). Contributing
    the same owner again is a no-op; an option name taken by another declaration is an error."""
    if owner in OWNERS:
        return
    added = [dataclasses.replace(o, group=group) for o in options]
    for option in added:
        _index(option)
    OWNERS[owner] = tuple(o.name for o in added)


def set_choices(name: str, choices: Iterable[Any], unsupported: Mapping[Any, str]) -> None:
    """Replace option ``name``'s accepted values (and those refused with a reason)."""
    old = CANONICAL[name]
    new = dataclasses.replace(
        old, choices=tuple(choices), unsupported_values=tuple(unsupported.items())
    )
    OPTIONS[OPTIONS.index(old)] = new
    for key in (name, *old.aliases):
        REGISTRY[key] = new
    CANONICAL[name] = new


_COMPLETE: list[bool] = []


def mark_complete() -> None:
    """Called by the composition root once every component contributed."""
    _COMPLETE[:] = [True]


def require_complete() -> None:
    """Refuse to read a config against the core catalog alone (every family option and the
    model_family names would be unknown): a program must import ``st_ray.plan`` first."""
    if not _COMPLETE:
        raise RuntimeError(
            "the option catalog holds only st_ray.config's core options: import st_ray.plan "
            "(the composition root, which adds the families' options and every component's "
            "checks) before loading a config"
        )


def lookup(name: str) -> Option | None:
    """The option for a name, alias, or ``--name`` spelling; None if unknown."""
    return REGISTRY.get(name.lstrip("-").replace("-", "_"))

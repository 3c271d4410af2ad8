"""The option catalog: every SimpleTuner option plus st_ray's own, declared once.

Each sibling module declares the options of one concern as ``OPTIONS`` (a list of
``Option``) and its ``GROUP`` title. ``REGISTRY`` maps every name and alias to its option.
"""

from __future__ import annotations

import dataclasses
import importlib

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


def _load() -> tuple[list[Option], dict[str, Option]]:
    options: list[Option] = []
    for module_name in _MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        options.extend(dataclasses.replace(o, group=module.GROUP) for o in module.OPTIONS)
    by_name: dict[str, Option] = {}
    for option in options:
        for key in (option.name, *option.aliases):
            if key in by_name:
                raise RuntimeError(f"option {key!r} is declared twice in the catalog")
            by_name[key] = option
    return options, by_name


OPTIONS, REGISTRY = _load()
CANONICAL: dict[str, Option] = {o.name: o for o in OPTIONS}


def lookup(name: str) -> Option | None:
    """The option for a name, alias, or ``--name`` spelling; None if unknown."""
    return REGISTRY.get(name.lstrip("-").replace("-", "_"))

"""The typed description of one option: the single source of truth for its name,
type, default, allowed values, help text and support status.

Every option the CLI, the config loaders, validation and ``--help`` know about is an
``Option`` declared once in ``st_ray.config.options``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Json:
    """Marker type: a JSON object/array given inline, as a JSON string, or as a path to a JSON file."""


class Support(enum.Enum):
    """How far st_ray honours an option.

    YES: accepted and used (or used by a pipeline stage on the roadmap's open issues).
    NO: documented by SimpleTuner but not implemented by st_ray yet; setting it to anything
        other than its default is an error, never silently ignored.
    """

    YES = "yes"
    NO = "no"


OptionType = type[bool] | type[int] | type[float] | type[str] | type[Json]


@dataclass(frozen=True)
class Option:
    name: str
    type: OptionType
    default: Any
    help: str
    group: str
    choices: tuple[Any, ...] | None = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    # Deprecated or alternative spellings that load into this option.
    aliases: tuple[str, ...] = ()
    # Values are redacted whenever a config is printed, logged or saved.
    secret: bool = False
    support: Support = Support.YES
    # Why an unsupported option is unsupported, or what to use instead.
    note: str = ""
    # Accept a comma-separated string or a JSON list of values, each checked against choices.
    multiple: bool = False
    # Individual choices st_ray does not implement yet, with the reason (e.g. one optimizer).
    unsupported_values: tuple[tuple[Any, str], ...] = ()
    # Why a SimpleTuner knob does nothing under Ray (e.g. worker counts Ray manages itself);
    # setting it is accepted and reported in the plan's notes, never silently dropped.
    no_effect: str = ""
    # Also a field of a dataset entry (multidatabackend.json): an entry may set its own value,
    # one that leaves it out inherits this option's. Declared only here: the dataset-field
    # table (st_ray.config.dataset_fields) derives the field's type, default and help from it.
    dataset_field: bool = False
    # Why an entry's own value is not honoured yet (every dataset uses the run-wide value).
    dataset_unsupported: str = ""
    # Caches a changed value makes stale: "text" (text embeddings) and/or "latent" (latents);
    # their settings fingerprints include the option.
    caches: tuple[str, ...] = ()


def opt(
    name: str,
    type: OptionType,
    default: Any,
    help: str,
    *,
    choices: tuple[Any, ...] | list[Any] | None = None,
    required: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    aliases: tuple[str, ...] = (),
    secret: bool = False,
    unsupported: str | None = None,
    multiple: bool = False,
    unsupported_values: dict[Any, str] | None = None,
    no_effect: str = "",
    dataset_field: bool = False,
    dataset_unsupported: str | None = None,
    caches: tuple[str, ...] = (),
) -> Option:
    """Declare an option. ``unsupported`` holds the reason st_ray does not implement it yet.

    ``dataset_field``: dataset entries may set it too and inherit it when they leave it out;
    ``dataset_unsupported``: the reason an entry's own value is not honoured yet.
    The group is filled in by the catalog module that declares the option.
    """
    if dataset_unsupported and not dataset_field:
        raise ValueError(f"{name}: dataset_unsupported needs dataset_field=True")
    return Option(
        name=name,
        type=type,
        default=default,
        help=help,
        group="",
        choices=tuple(choices) if choices is not None else None,
        required=required,
        minimum=minimum,
        maximum=maximum,
        aliases=aliases,
        secret=secret,
        support=Support.NO if unsupported else Support.YES,
        note=unsupported or "",
        multiple=multiple,
        unsupported_values=tuple((unsupported_values or {}).items()),
        no_effect=no_effect,
        dataset_field=dataset_field,
        dataset_unsupported=dataset_unsupported or "",
        caches=caches,
    )

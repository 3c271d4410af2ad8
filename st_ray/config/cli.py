"""Command-line front of the jobs: the job's own flags, ``--help`` built from the option catalog,
and everything else passed through as option overrides."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from st_ray.config.errors import format_choices
from st_ray.config.options import OPTIONS
from st_ray.config.schema import Json, Support

_TYPE_NAMES = {bool: "BOOL", int: "INT", float: "FLOAT", str: "TEXT", Json: "JSON"}


def job_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser for a job's own flags; ``--help`` also lists every training option."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    parser.add_argument(
        "--config",
        help="config.json / config.toml, or a folder holding one (config.env beside it is read)",
    )
    return parser


def split_args(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[argparse.Namespace, list[str]]:
    """The job's own flags, and the remaining tokens as option overrides."""
    return parser.parse_known_args(list(argv))


def options_help() -> str:
    """Every option, grouped by concern, with type, default, accepted values and help."""
    lines: list[str] = []
    group = None
    for option in OPTIONS:
        if option.group != group:
            group = option.group
            lines += ["", f"{group}:"]
        flag = f"  --{option.name} {_TYPE_NAMES[option.type]}"
        details = [option.help]
        if option.choices:
            details.append(f"choices: {format_choices(option.choices)}")
        if option.required:
            details.append("required")
        elif option.default is not None:
            details.append(f"default: {option.default!r}")
        if option.no_effect:
            details.append(f"no effect in st_ray ({option.no_effect})")
        if option.support is Support.NO:
            details.append(f"NOT SUPPORTED YET ({option.note})")
        for value, reason in option.unsupported_values:
            details.append(f"{value!r} not supported yet ({reason})")
        if option.dataset_unsupported:
            details.append(
                f"also a dataset field, not honoured per dataset yet: {option.dataset_unsupported}"
            )
        elif option.dataset_field and option.no_effect:
            details.append("also a dataset field (with no effect there either)")
        elif option.dataset_field:
            details.append("also a dataset field: an entry's own value wins for that dataset")
        if option.name == "model_family":
            refused = {value for value, _ in option.unsupported_values}
            available = [str(c) for c in option.choices or () if c not in refused]
            details.append("available in st_ray now: " + ", ".join(available))
        lines.append(flag)
        lines += [f"        {text}" for text in details]
        # Older (deprecated) and alternative names the loader maps onto this option.
        lines += [f"  --{alias}  alias of --{option.name} (older name)" for alias in option.aliases]
    return "\n".join(lines)


def print_help(parser: argparse.ArgumentParser) -> None:
    print(parser.format_help())
    print("Training options (config.json keys; on the command line as --name value):")
    print(options_help())

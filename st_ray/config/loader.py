"""Load a run's options from config.json / config.toml, config.env and command-line overrides.

Precedence, lowest to highest:
    1. built-in defaults (the option catalog)
    2. the config file (config.json or config.toml)
    3. config.env beside it (TRAINING_NUM_PROCESSES and friends, mapped below)
    4. command-line overrides (``--key value``, ``--key=value``, ``--flag``)

``{env:VAR}`` placeholders in any string value are replaced from the process environment,
overlaid with the variables config.env defines (config.env is "sourced" in SimpleTuner).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from st_ray.config.errors import ConfigError, Problem, ProblemList, unknown_key_message
from st_ray.config.options import CANONICAL, OPTIONS, lookup, require_complete
from st_ray.config.schema import Option, Support
from st_ray.config.sources import read_env_file, read_json, read_toml
from st_ray.config.values import (
    FALSE_WORDS,
    TRUE_WORDS,
    coerce,
    expand_placeholders,
    safe_error,
)

CONFIG_FILE_NAMES = ("config.json", "config.toml")

# config.env variables that SimpleTuner's launcher reads, mapped to st_ray options.
ENV_TO_OPTION = {
    "TRAINING_NUM_PROCESSES": "num_processes",
    "TRAINING_NUM_MACHINES": "num_machines",
    "TRAINING_DYNAMO_BACKEND": "dynamo_backend",
    "MIXED_PRECISION": "mixed_precision",
}
# Launcher-only variables that have no meaning under Ray; accepted and reported in the plan.
ENV_LAUNCHER_ONLY = (
    "VENV_PATH",
    "ENV",
    "CONFIG_BACKEND",
    "CONFIG_PATH",
    "DISABLE_UPDATES",
    "TRAINING_PORT",
    "SIMPLETUNER_LOG_LEVEL",
    "TRAINING_MACHINE_RANK",
    "TRAINING_MAIN_PROCESS_IP",
    "TRAINING_MAIN_PROCESS_PORT",
)
# Accelerate flags that Ray makes redundant; anything else in ACCELERATE_EXTRA_ARGS is refused.
_HARMLESS_ACCELERATE_FLAGS = {"--multi_gpu"}
_SHARDING_WORDS = ("fsdp", "deepspeed", "megatron", "tp_", "zero")

COMMAND_LINE = "command line"


@dataclass
class LoadedConfig:
    """Every canonical option with its typed value, and where each value came from."""

    values: dict[str, Any]
    provenance: dict[str, str]
    config_path: Path | None
    env_path: Path | None
    env: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def explicit(self) -> dict[str, Any]:
        """Options whose value did not come from the built-in default."""
        return {k: v for k, v in self.values.items() if self.provenance[k] != "default"}


def find_config_file(config: str | Path) -> Path:
    """A config file path, or a directory holding config.json / config.toml."""
    path = Path(config).expanduser()
    if path.is_dir():
        for name in CONFIG_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise ConfigError(
            [Problem(str(path), None, "directory holds no config.json or config.toml")]
        )
    if not path.exists():
        raise ConfigError([Problem(str(path), None, "config file does not exist")])
    if path.suffix not in (".json", ".toml"):
        raise ConfigError(
            [
                Problem(
                    str(path),
                    None,
                    f"unsupported config file type '{path.suffix}'; "
                    "accepted: .json, .toml (config.env is read from the same folder)",
                )
            ]
        )
    return path


def load_config(
    config: str | Path | None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    problems: ProblemList | None = None,
) -> LoadedConfig:
    """Load and type every option; raises ``ConfigError`` listing every problem found.

    Values that cannot be read or typed raise at once. Required and not-yet-supported options
    are added to ``problems`` when given (so callers can report them with later checks), else
    raised too.
    """
    require_complete()
    environ = dict(os.environ if environ is None else environ)
    collect = problems
    problems = ProblemList()
    config_path = find_config_file(config) if config is not None else None
    env_path = config_path.parent / "config.env" if config_path is not None else None
    if env_path is not None and not env_path.is_file():
        env_path = None

    layers: list[tuple[str, dict[str, Any]]] = []
    if config_path is not None:
        layers.append((str(config_path), _read_config_file(config_path)))
    env_vars: dict[str, str] = read_env_file(env_path) if env_path else {}
    notes: list[str] = []
    if env_path is not None:
        layers.append((str(env_path), _options_from_env(env_vars, str(env_path), problems, notes)))
    layers.append((COMMAND_LINE, parse_overrides(overrides, problems)))

    placeholder_env = {**environ, **env_vars}
    values: dict[str, Any] = {o.name: default_value(o) for o in OPTIONS}
    provenance = {o.name: "default" for o in OPTIONS}
    for source, raw_values in layers:
        seen: dict[str, str] = {}
        for raw_key, raw in raw_values.items():
            key = raw_key.lstrip("-")
            option = lookup(ENV_TO_OPTION.get(key, key))
            if option is None:
                problems.add(source, key, unknown_key_message(key, CANONICAL))
                continue
            if option.name in seen:
                problems.add(source, raw_key, f"given twice (also as '{seen[option.name]}')")
                continue
            seen[option.name] = raw_key
            if key in option.aliases:
                notes.append(f"{source}: '{key}' is an older name, read as '{option.name}'")
            try:
                value = coerce(option, expand_placeholders(raw, placeholder_env, {}))
            except ValueError as err:
                problems.add(source, key, safe_error(option, key, err))
                continue
            values[option.name] = default_value(option) if value is None else value
            provenance[option.name] = source
    problems.raise_if_any()

    loaded = LoadedConfig(values, provenance, config_path, env_path, placeholder_env, notes)
    if collect is not None:
        _check_required_and_supported(loaded, collect)
    else:
        _check_required_and_supported(loaded, problems)
        problems.raise_if_any()
    return loaded


def default_value(option: Option) -> Any:
    """The default as the loader types values (multi-value options hold lists)."""
    if option.multiple and option.default is not None:
        return coerce(option, option.default)
    return option.default


def _read_config_file(path: Path) -> dict[str, Any]:
    data = read_toml(path) if path.suffix == ".toml" else read_json(path, "config file")
    if not isinstance(data, dict):
        raise ConfigError(
            [
                Problem(
                    str(path),
                    None,
                    f"expected an object of option names to values, "
                    f"found a JSON {type(data).__name__}",
                )
            ]
        )
    return data


def _options_from_env(
    env_vars: Mapping[str, str], source: str, problems: ProblemList, notes: list[str]
) -> dict[str, Any]:
    """The config.env variables that set options, keyed by variable name (for messages)."""
    options: dict[str, Any] = {}
    for var, value in env_vars.items():
        if var in ENV_TO_OPTION:
            options[var] = value
        elif var == "ACCELERATE_EXTRA_ARGS":
            _check_accelerate_flags(value, source, problems, notes)
        elif var in ENV_LAUNCHER_ONLY:
            notes.append(f"{source}: {var} is a launcher setting with no effect under Ray")
        elif var.startswith("TRAINING_"):
            known = [*ENV_TO_OPTION, *ENV_LAUNCHER_ONLY]
            problems.add(source, var, unknown_key_message(var, known, "config.env variable"))
    return options


def _check_accelerate_flags(
    value: str, source: str, problems: ProblemList, notes: list[str]
) -> None:
    """Ray Train places workers, so accelerate's launch flags mostly do not apply. Flags that
    change how training is sharded would be silently lost: those are refused."""
    flags = [f for f in value.split() if f.startswith("--")]
    refused = [f for f in flags if any(w in f for w in _SHARDING_WORDS)]
    if refused:
        problems.add(
            source,
            "ACCELERATE_EXTRA_ARGS",
            f"{refused} set up sharded training, "
            "which st_ray does not do through accelerate; remove them (accepted: "
            "empty, --multi_gpu, or launch-only flags)",
        )
    ignored = [f for f in flags if f not in refused and f not in _HARMLESS_ACCELERATE_FLAGS]
    if ignored:
        notes.append(
            f"{source}: ACCELERATE_EXTRA_ARGS {ignored} only affect accelerate's "
            "launcher and are ignored under Ray"
        )


def parse_overrides(argv: Sequence[str], problems: ProblemList | None = None) -> dict[str, Any]:
    """``--key value``, ``--key=value`` and bare boolean ``--flag`` tokens, as raw strings."""
    own = problems if problems is not None else ProblemList()
    result: dict[str, Any] = {}
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--") or token == "--":
            own.add(
                COMMAND_LINE,
                None,
                f"unexpected argument {token!r}; options look like "
                "--name value, --name=value or --flag",
            )
            continue
        name, has_value, value = token[2:].partition("=")
        option = lookup(name)
        if not has_value:
            next_is_value = i < len(tokens) and not tokens[i].startswith("--")
            if option is not None and (option.type is bool or _is_tri_state(option)):
                if next_is_value and tokens[i].lower() in TRUE_WORDS | FALSE_WORDS:
                    value = tokens[i]
                    i += 1
                else:
                    value = "true"
            elif next_is_value:
                value = tokens[i]
                i += 1
            elif option is not None:
                own.add(COMMAND_LINE, name, "needs a value (--name value or --name=value)")
                continue
        result[name] = value
    if problems is None:
        own.raise_if_any()
    return result


def _is_tri_state(option: Option) -> bool:
    return bool(option.choices) and "true" in option.choices


def _check_required_and_supported(loaded: LoadedConfig, problems: ProblemList) -> None:
    for option in OPTIONS:
        value = loaded.values[option.name]
        source = loaded.provenance[option.name]
        if option.required and value is None:
            problems.add(
                "configuration",
                option.name,
                "is required but not set (add it to config.json or pass "
                f"--{option.name} on the command line)",
            )
            continue
        if value == default_value(option):
            continue
        if option.no_effect:
            loaded.notes.append(f"{option.name} has no effect in st_ray: {option.no_effect}")
            continue
        if option.support is Support.NO:
            problems.add(
                source,
                option.name,
                f"is not supported by st_ray yet ({option.note}); remove it or set it "
                f"to its default {option.default!r}",
            )
            continue
        for bad_value, reason in option.unsupported_values:
            chosen = value if isinstance(value, list) else [value]
            if bad_value in chosen:
                problems.add(
                    source,
                    option.name,
                    f"value {bad_value!r} is not supported by st_ray yet ({reason})",
                )

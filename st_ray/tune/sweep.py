"""The sweep file: what a campaign searches over and how, checked before any trial starts.

```json
{
  "name": "lr-rank",
  "search_space": {
    "learning_rate": {"loguniform": [1e-5, 1e-3]},
    "lora_rank": {"grid": [4, 16]},
    "optimizer": {"choice": ["adamw_bf16", "prodigy"]},
    "lora_alpha": 8
  },
  "num_samples": 2,
  "search": "random",
  "scheduler": {"type": "asha", "grace_period": 50, "reduction_factor": 2},
  "metric": "eval_loss", "mode": "min",
  "max_concurrent_trials": 2,
  "resources_per_trial": {"workers": 1, "gpus_per_worker": 1, "cpus_per_worker": 4},
  "storage_path": "s3://bucket/campaigns"
}
```

A dimension is a fixed value or one of ``{"choice": [...]}``, ``{"grid": [...]}``,
``{"uniform": [low, high]}``, ``{"loguniform": [low, high]}``, ``{"randint": [low, high]}``
(high excluded). Options that change the caches (resolution, model, VAE, captions, seed...) are
refused as dimensions: every trial shares the one cache built before the campaign.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from st_ray.config.errors import Problem, unknown_key_message
from st_ray.config.options import lookup
from st_ray.config.schema import Option, Support
from st_ray.config.values import coerce

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SEARCHES = ("random", "grid")
SCHEDULERS = ("asha", "none")
TOP_LEVEL = (
    "name",
    "search_space",
    "num_samples",
    "search",
    "scheduler",
    "metric",
    "mode",
    "max_concurrent_trials",
    "resources_per_trial",
    "storage_path",
)
SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor", "max_t")
RESOURCE_KEYS = ("workers", "gpus_per_worker", "cpus_per_worker")

# Options whose value changes the latent or text-embedding caches (see
# st_ray.data.pipeline.latent_settings / text_settings) or which dataset to read: one shared
# cache means they cannot vary between trials.
CACHE_OPTIONS = (
    "model_family",
    "model_flavour",
    "pretrained_model_name_or_path",
    "pretrained_vae_model_name_or_path",
    "pretrained_t5_model_name_or_path",
    "pretrained_gemma_model_name_or_path",
    "revision",
    "variant",
    "vae_dtype",
    "seed",
    "resolution",
    "resolution_type",
    "crop",
    "crop_style",
    "crop_aspect",
    "crop_aspect_buckets",
    "minimum_image_size",
    "maximum_image_size",
    "target_downsample_size",
    "max_upscale_threshold",
    "aspect_bucket_alignment",
    "aspect_bucket_rounding",
    "caption_strategy",
    "instance_prompt",
    "prepend_instance_prompt",
    "only_instance_prompt",
    "tokenizer_max_length",
    "t5_padding",
    "data_backend_config",
    "cache_dir_vae",
    "cache_dir_text",
)
# Set by the campaign for every trial (names, storage, tracking, resources).
CAMPAIGN_OPTIONS = (
    "output_dir",
    "tracker_run_name",
    "tracker_project_name",
    "run_storage_path",
    "resume_from_checkpoint",
    "num_processes",
    "cpus_per_worker",
    "use_gpu",
    "ray_address",
    "report_to",
    "mlflow_tracking_uri",
    "mlflow_experiment_name",
    "mlflow_parent_run_id",
)


class SweepError(Exception):
    """Every problem of a sweep file, each naming its key."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"invalid sweep ({len(self.problems)} problem(s)):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class Dimension:
    option: str
    kind: str  # "fixed" or one of DISTRIBUTIONS
    values: tuple[Any, ...]  # the choices/grid values, (low, high), or (the fixed value,)


@dataclass(frozen=True)
class Sweep:
    name: str
    dimensions: tuple[Dimension, ...]
    num_samples: int = 1
    search: str = "random"
    scheduler: str = "asha"
    grace_period: int | None = None  # steps; default: the eval interval
    reduction_factor: float = 2.0
    max_t: int | None = None  # steps; default: max_train_steps
    metric: str = "eval_loss"
    mode: str = "min"
    max_concurrent_trials: int = 1
    workers: int = 1
    gpus_per_worker: int = 0
    cpus_per_worker: float | None = None  # None: the config's cpus_per_worker
    storage_path: str | None = None  # None: <output_dir>/tune
    source: str = "sweep"


def load_sweep(
    path: str | Path, check_values: Callable[[str, Any], list[str]] | None = None
) -> Sweep:
    """Read and check a sweep file. ``check_values(option, value)`` returns the problems of a
    trial config with that one value (the run config's own validation), if given."""
    source = str(path)
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SweepError([Problem(source, None, f"cannot read the sweep file: {err}")]) from err
    return parse_sweep(raw, source, default_name=Path(path).stem, check_values=check_values)


def parse_sweep(
    raw: Any,
    source: str = "sweep",
    *,
    default_name: str = "campaign",
    check_values: Callable[[str, Any], list[str]] | None = None,
) -> Sweep:
    problems: list[Problem] = []

    def add(key: str | None, message: str) -> None:
        problems.append(Problem(source, key, message))

    if not isinstance(raw, dict):
        raise SweepError([Problem(source, None, "expected a JSON object")])
    for key in raw:
        if key not in TOP_LEVEL:
            add(key, unknown_key_message(key, TOP_LEVEL, "sweep key"))
    dimensions = _dimensions(raw.get("search_space"), add)
    values: dict[str, Any] = {"name": str(raw.get("name") or default_name), "source": source}
    values["num_samples"] = _int(raw, "num_samples", 1, 1, add)
    values["max_concurrent_trials"] = _int(raw, "max_concurrent_trials", 1, 1, add)
    values["search"] = _one_of(raw, "search", "random", SEARCHES, add)
    values["mode"] = _one_of(raw, "mode", "min", ("min", "max"), add)
    metric = raw.get("metric", "eval_loss")
    if not isinstance(metric, str) or not metric:
        add("metric", "expected a metric name such as 'eval_loss' or 'loss'")
    values["metric"] = metric
    values.update(_scheduler(raw.get("scheduler", "asha"), add))
    values.update(_resources(raw.get("resources_per_trial", {}), add))
    storage = raw.get("storage_path")
    if storage is not None and (not isinstance(storage, str) or not storage):
        add("storage_path", "expected a local folder or an s3:// URI")
    values["storage_path"] = storage
    if values["search"] == "grid":
        for d in dimensions:
            if d.kind not in ("grid", "fixed"):
                add(
                    f"search_space.{d.option}",
                    f"'{d.kind}' is a random distribution; search 'grid' takes only "
                    '{"grid": [...]} and fixed values (use search "random" to mix them)',
                )
    if check_values is not None and not problems:
        for d in dimensions:
            # Bounds are numbers already checked against the option's range above.
            candidates = d.values if d.kind in ("choice", "grid", "fixed") else ()
            for value in candidates:
                for message in check_values(d.option, value):
                    add(f"search_space.{d.option}", f"value {value!r}: {message}")
    if problems:
        raise SweepError(problems)
    return Sweep(dimensions=tuple(dimensions), **values)


def _dimensions(space: Any, add: Callable[[str | None, str], None]) -> list[Dimension]:
    if not isinstance(space, dict) or not space:
        add("search_space", "expected an object of option -> distribution (at least one)")
        return []
    dims = []
    for name, spec in space.items():
        key = f"search_space.{name}"
        option = lookup(str(name))
        if option is None:
            from st_ray.config.options import REGISTRY

            add(key, unknown_key_message(str(name), REGISTRY, "option"))
            continue
        # Catalog options marked as changing a cache (families' own ones included) count too.
        if option.name in CACHE_OPTIONS or option.caches:
            add(
                key,
                f"'{option.name}' changes the caches, which every trial shares (one cache is "
                "built before the campaign); run one campaign per value instead",
            )
            continue
        if option.name in CAMPAIGN_OPTIONS:
            add(key, f"'{option.name}' is set by the campaign for each trial; it cannot be swept")
            continue
        if option.support is Support.NO:
            add(key, f"'{option.name}' is not supported by st_ray yet ({option.note})")
            continue
        dim = _dimension(option, spec, key, add)
        if dim is not None:
            dims.append(dim)
    return dims


def _dimension(
    option: Option, spec: Any, key: str, add: Callable[[str | None, str], None]
) -> Dimension | None:
    if not isinstance(spec, dict):
        spec = {"fixed": [spec]}
    if len(spec) != 1 or next(iter(spec)) not in (*DISTRIBUTIONS, "fixed"):
        add(
            key,
            f"expected a value or an object with one key of {', '.join(DISTRIBUTIONS)}"
            f"; found {json.dumps(spec)}",
        )
        return None
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        add(key, f"'{kind}' takes a non-empty JSON list")
        return None
    if kind in ("uniform", "loguniform", "randint"):
        return _range(option, kind, args, key, add)
    typed = []
    for value in args:
        try:
            typed.append(coerce(option, value))
        except ValueError as err:
            add(key, f"value {value!r}: {err}")
            continue
        for bad, reason in option.unsupported_values:
            if typed[-1] == bad:
                add(key, f"value {value!r} is not supported by st_ray yet ({reason})")
    return Dimension(option.name, kind, tuple(typed))


def _range(
    option: Option, kind: str, args: list[Any], key: str, add: Callable[[str | None, str], None]
) -> Dimension | None:
    wanted = int if kind == "randint" else (int, float)
    if option.type not in ((int,) if kind == "randint" else (int, float)):
        add(key, f"'{kind}' needs a numeric option; '{option.name}' is {option.type.__name__}")
        return None
    if len(args) != 2 or not all(isinstance(a, wanted) and not isinstance(a, bool) for a in args):
        add(key, f"'{kind}' takes [low, high] numbers")
        return None
    low, high = args
    if not low < high:
        add(key, f"'{kind}' needs low < high (got [{low}, {high}])")
        return None
    if kind == "loguniform" and low <= 0:
        add(key, f"'loguniform' needs low > 0 (got {low})")
        return None
    top = high - 1 if kind == "randint" else high
    for bound in (low, top):
        try:
            coerce(option, bound)
        except ValueError as err:
            add(key, f"bound {bound!r}: {err}")
            return None
    if option.type is int and kind != "randint":
        add(key, f"'{option.name}' takes integers; use 'randint' or 'choice'")
        return None
    return Dimension(option.name, kind, (low, high))


def _int(
    raw: Mapping[str, Any], key: str, default: int, low: int, add: Callable[[str | None, str], None]
) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        add(key, f"expected an integer >= {low}, found {value!r}")
        return default
    return value


def _one_of(
    raw: Mapping[str, Any],
    key: str,
    default: str,
    accepted: tuple[str, ...],
    add: Callable[[str | None, str], None],
) -> str:
    value = raw.get(key, default)
    if value not in accepted:
        add(key, f"{value!r} is not one of {', '.join(accepted)}")
        return default
    return value


def _scheduler(spec: Any, add: Callable[[str | None, str], None]) -> dict[str, Any]:
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        add("scheduler", f"expected 'asha', 'none' or an object; found {spec!r}")
        return {}
    for key in spec:
        if key not in SCHEDULER_KEYS:
            add(f"scheduler.{key}", unknown_key_message(key, SCHEDULER_KEYS, "scheduler key"))
    out: dict[str, Any] = {
        "scheduler": _one_of(spec, "type", "asha", SCHEDULERS, lambda k, m: add("scheduler", m))
    }
    for key in ("grace_period", "max_t"):
        if spec.get(key) is not None:
            out[key] = _int(spec, key, 1, 1, lambda k, m: add(f"scheduler.{k}", m))
    factor = spec.get("reduction_factor", 2)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or factor <= 1:
        add("scheduler.reduction_factor", f"expected a number > 1, found {factor!r}")
    else:
        out["reduction_factor"] = float(factor)
    return out


def _resources(spec: Any, add: Callable[[str | None, str], None]) -> dict[str, Any]:
    if not isinstance(spec, dict):
        add("resources_per_trial", "expected an object with workers, gpus_per_worker, ...")
        return {}
    for key in spec:
        if key not in RESOURCE_KEYS:
            add(
                f"resources_per_trial.{key}",
                unknown_key_message(key, RESOURCE_KEYS, "resource key"),
            )

    def at(key: str) -> Callable[[str | None, str], None]:
        return lambda _k, m: add(f"resources_per_trial.{key}", m)

    out: dict[str, Any] = {"workers": _int(spec, "workers", 1, 1, at("workers"))}
    out["gpus_per_worker"] = _int(spec, "gpus_per_worker", 0, 0, at("gpus_per_worker"))
    if out["gpus_per_worker"] > 1:
        add("resources_per_trial.gpus_per_worker", "Ray Train workers use 0 or 1 GPU each")
    cpus = spec.get("cpus_per_worker")
    if cpus is not None:
        if isinstance(cpus, bool) or not isinstance(cpus, int | float) or cpus <= 0:
            add("resources_per_trial.cpus_per_worker", f"expected a number > 0, found {cpus!r}")
        else:
            out["cpus_per_worker"] = float(cpus)
    return out

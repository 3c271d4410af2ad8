"""The optimizer factory: every ``optimizer`` choice of the catalog, built from the options.

``build_optimizer(params_or_groups, options)`` returns a ready ``torch.optim.Optimizer`` (already in
train mode); ``check_available(options)`` runs the same checks without parameters, at config
validation time; ``set_train_mode(optimizer, training)`` switches schedule-free optimizers between
their training (y) and evaluation (x) weights and does nothing for the others. ``SPECS[name]``
tells the training loop what SimpleTuner does around each optimizer (skip gradient clipping,
replace the LR scheduler, ...). The catalog (``SPECS``) and where each optimizer comes from:
``st_ray.train.optimizer_specs``.

Keyword arguments, lowest precedence first (SimpleTuner's ``optimizer_param.py``):

1. SimpleTuner's ``default_settings`` of the optimizer, and ``lr`` = ``learning_rate``.
2. ``adam_beta1``/``adam_beta2``/``adam_epsilon``/``adam_weight_decay`` for the Adam-family
   optimizers, only where set to something other than the catalog default. SimpleTuner passes
   them to DeepSpeed's optimizer only; st_ray honours them as its option help promises, and
   leaves SimpleTuner's per-optimizer defaults alone when they are not set.
3. ``optimizer_config`` ('key=value,key=value'; values become int, float, bool, None or str).
   Keys the optimizer does not take are an error here (SimpleTuner drops them with a warning).
4. ``optimizer_beta1``/``optimizer_beta2``, each on its own (SimpleTuner wants both), replacing
   the first/second beta; an optimizer without betas refuses them.
5. ``prodigy_steps`` (prodigy) and ``lr_warmup_steps`` (schedule-free ``warmup_steps``).

Notes for the loop: schedule-free optimizers (``SPECS[name].schedule_free``) must be put in eval
mode before validation, saving or exporting weights and back in train mode afterwards; the
``schedulefree`` package also overwrites ``.grad`` during ``step()``, so log gradient norms before
stepping. SimpleTuner does not clip gradients for 'optimi-stableadamw' and 'prodigy'
(``SPECS[name].clip_gradients``). With ``optimizer_release_gradients`` the loop must call
``optimi.prepare_for_gradient_release(model, optimizer)``. With data parallelism every rank must
use the same ``seed`` for ``adamw_bf16`` so that the replicas round identically.

SimpleTuner sources matched: ``simpletuner/helpers/training/optimizer_param.py``
(``optimizer_choices``, ``convert_arg_to_parameters``, ``optimizer_parameters``,
``determine_optimizer_class_with_config``) and ``trainer.py`` (``init_optimizer``,
``mark_optimizer_train``/``mark_optimizer_eval``, the clipping condition).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

from st_ray.config.options import CANONICAL
from st_ray.train.optimizer_specs import FP8_STATES, SPECS, OptimizerSpec, OptimizerUnavailable

# --- options -> keyword arguments -----------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_optimizer_config(text: str | None) -> dict[str, Any]:
    """'key=value,key=value' as typed keyword arguments: int, float, bool, None or str."""
    out: dict[str, Any] = {}
    for piece in (text or "").split(","):
        piece = piece.strip()
        if not piece:
            continue
        key, sep, raw = (s.strip() for s in piece.partition("="))
        if not sep or not key:
            raise ValueError(
                f"optimizer_config: {piece!r} is not key=value; write comma-separated pairs "
                f"such as 'd_coef=0.1,use_bias_correction=true'"
            )
        if key in out:
            raise ValueError(f"optimizer_config: {key!r} is given twice")
        lowered = raw.lower()
        if lowered in ("true", "false"):
            out[key] = lowered == "true"
        elif lowered in ("none", "null"):
            out[key] = None
        elif _INT.fullmatch(raw):
            out[key] = int(raw)
        elif _FLOAT.fullmatch(raw):
            out[key] = float(raw)
        else:
            out[key] = raw
    return out


def _option(options: Mapping[str, Any], name: str) -> Any:
    """The option's value, or its catalog default where ``options`` lacks it."""
    return options[name] if name in options else CANONICAL[name].default


def _changed(options: Mapping[str, Any], name: str) -> Any | None:
    """The option's value where it differs from the catalog default, else None."""
    value = _option(options, name)
    return None if value is None or value == CANONICAL[name].default else value


def _accepted_keys(cls: type[Optimizer]) -> set[str]:
    parameters = inspect.signature(cls.__init__).parameters
    kinds = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return {n for n, p in parameters.items() if n not in ("self", "params") and p.kind not in kinds}


def _given(beta1: float | None, beta2: float | None) -> dict[int, float]:
    """{index: value} of the betas that are set."""
    return {i: b for i, b in enumerate((beta1, beta2)) if b is not None}


def _with_betas(kwargs: dict[str, Any], values: dict[int, float], source: str, name: str) -> None:
    if "betas" not in kwargs:
        raise ValueError(f"{source} is set, but optimizer {name!r} has no betas; unset it")
    betas = list(kwargs["betas"])
    for index, value in values.items():
        betas[index] = value
    kwargs["betas"] = tuple(betas)


def optimizer_spec(options: Mapping[str, Any]) -> OptimizerSpec:
    name = _option(options, "optimizer")
    if name not in SPECS:
        raise ValueError(f"optimizer {name!r} is unknown; choose one of: {', '.join(SPECS)}")
    return SPECS[name]


def optimizer_kwargs(
    options: Mapping[str, Any], learning_rate: float | None = None
) -> tuple[type[Optimizer], dict[str, Any]]:
    """The optimizer class and its keyword arguments (all but the parameters) for the options;
    ``learning_rate`` (the run's peak rate after lr_scale) replaces the option when given.

    Raises OptimizerUnavailable when the class cannot be imported and ValueError for settings
    the optimizer does not take.
    """
    spec = optimizer_spec(options)
    cls = spec.load()
    accepted = _accepted_keys(cls)
    lr = _option(options, "learning_rate") if learning_rate is None else learning_rate
    kwargs: dict[str, Any] = {"lr": lr, **spec.defaults}

    if spec.adam_family:
        adam_betas = _given(_changed(options, "adam_beta1"), _changed(options, "adam_beta2"))
        if adam_betas:
            _with_betas(kwargs, adam_betas, "adam_beta1/adam_beta2", spec.name)
        for option, key in (("adam_epsilon", "eps"), ("adam_weight_decay", "weight_decay")):
            value = _changed(options, option)
            if value is not None:
                kwargs[key] = value
    if spec.warmup_in_optimizer:
        kwargs["warmup_steps"] = _option(options, "lr_warmup_steps")
    if spec.name == "adamw_bf16":
        # Every data-parallel rank must round alike: one seed for all, never a per-rank one.
        kwargs["seed"] = _option(options, "seed") or 0

    config = parse_optimizer_config(_option(options, "optimizer_config"))
    config = {spec.aliases.get(k, k): v for k, v in config.items()}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ValueError(
            f"optimizer_config: {', '.join(repr(k) for k in unknown)} "
            f"{'is' if len(unknown) == 1 else 'are'} not a setting of optimizer {spec.name!r}; "
            f"it accepts: {', '.join(sorted(accepted))}"
        )
    if spec.name == "soap" and config.get("shampoo_beta") == -1:
        config["shampoo_beta"] = None  # SimpleTuner's spelling of "use beta2"
    kwargs.update(config)

    betas = _given(_option(options, "optimizer_beta1"), _option(options, "optimizer_beta2"))
    if betas:
        _with_betas(kwargs, betas, "optimizer_beta1/optimizer_beta2", spec.name)

    prodigy_steps = _option(options, "prodigy_steps")
    if spec.name == "prodigy" and prodigy_steps:
        kwargs["prodigy_steps"] = int(prodigy_steps)

    if _option(options, "optimizer_release_gradients"):
        if spec.package != "torch-optimi":
            raise ValueError(
                f"optimizer_release_gradients works with the optimi-* optimizers only, not "
                f"{spec.name!r}; unset it or choose an optimi-* optimizer"
            )
        if _option(options, "gradient_accumulation_steps") > 1:
            raise ValueError(
                "optimizer_release_gradients frees each gradient right after its update, so it "
                "cannot be combined with gradient_accumulation_steps > 1"
            )
        kwargs["gradient_release"] = True

    # The remaining defaults are SimpleTuner's own; a package that renamed one is a bug here.
    stray = sorted(set(kwargs) - accepted)
    if stray:
        raise RuntimeError(f"{cls.__name__} does not take {stray}: the optimizer table is stale")
    return cls, kwargs


def check_available(options: Mapping[str, Any]) -> None:
    """Everything ``build_optimizer`` checks that needs no parameters; for config validation."""
    optimizer_kwargs(options)


def _check_devices(name: str, params: list[torch.Tensor]) -> None:
    if name not in FP8_STATES:
        return
    for device in {p.device for p in params if p.device.type == "cuda"}:
        if torch.cuda.get_device_capability(device) < (8, 9):
            raise OptimizerUnavailable(
                f"optimizer {name!r} keeps its state in float8, which needs a CUDA GPU of compute "
                f"capability 8.9 or newer (Ada, Hopper); {torch.cuda.get_device_name(device)} "
                f"is not one: choose 'ao-adamw8bit' instead"
            )


def _flat_params(params_or_groups: Iterable[Any]) -> list[torch.Tensor]:
    flat: list[torch.Tensor] = []
    for entry in params_or_groups:
        if isinstance(entry, dict):
            group = entry["params"]
            flat.extend([group] if isinstance(group, torch.Tensor) else group)
        else:
            flat.append(entry)
    return flat


def build_optimizer(
    params_or_groups: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    options: Mapping[str, Any],
    *,
    learning_rate: float | None = None,
) -> Optimizer:
    """The optimizer the options ask for over these parameters (or groups), in train mode;
    ``learning_rate`` replaces the option's (the run's rate after lr_scale)."""
    params_or_groups = list(params_or_groups)
    cls, kwargs = optimizer_kwargs(options, learning_rate)
    spec = optimizer_spec(options)
    _check_devices(spec.name, _flat_params(params_or_groups))
    optimizer = cls(params_or_groups, **kwargs)
    set_train_mode(optimizer, True)
    return optimizer


def set_train_mode(optimizer: Optimizer, training: bool) -> None:
    """Schedule-free optimizers: swap the parameters to y (train) or x (eval). Others: no-op."""
    switch = getattr(optimizer, "train" if training else "eval", None)
    if callable(switch):
        switch()

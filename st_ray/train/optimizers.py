"""The optimizer factory: every ``optimizer`` choice of the catalog, built from the options.

``build_optimizer(params_or_groups, options)`` returns a ready ``torch.optim.Optimizer`` (already in
train mode); ``check_available(options)`` runs the same checks without parameters, at config
validation time; ``set_train_mode(optimizer, training)`` switches schedule-free optimizers between
their training (y) and evaluation (x) weights and does nothing for the others. ``SPECS[name]``
tells the training loop what SimpleTuner does around each optimizer (skip gradient clipping,
replace the LR scheduler, ...).

Where each optimizer comes from:

- ``adamw_bf16``: ``AdamWBF16`` below, st_ray's own: plain AdamW math in float32; bf16 parameters
  and their moments are written back with stochastic rounding, so updates far below bf16's
  resolution still move the weights on average (SimpleTuner ships a compensated-summation
  variant; the aim is the same, without an extra correction buffer).
- ``ao-adamw8bit``, ``ao-adamw4bit``, ``ao-adamfp8``, ``ao-adamwfp8``: ``torchao.optim`` (its step
  is ``torch.compile``'d, so the first step compiles for a while). The fp8 states need a CUDA GPU
  of compute capability 8.9 or newer when the parameters are on CUDA; they run on CPU.
- ``adamw_schedulefree`` (+``aggressive``, +``no_kahan``): the ``schedulefree`` package's
  ``AdamWScheduleFree``, warmed up over ``lr_warmup_steps`` by the optimizer itself. SimpleTuner's
  own class adds Kahan summation; the package has none, so '+no_kahan' differs from
  '+aggressive' in nothing — as in SimpleTuner, whose sanitiser drops the variant's ``use_kahan``
  key (its class calls it ``kahan_sum``).
- ``optimi-*``: ``torch-optimi``; ``optimizer_release_gradients`` sets ``gradient_release``.
- ``soap``: ``SOAP`` of the ``pytorch-optimizer`` package; SimpleTuner's key spellings
  ``max_precond_dim`` and ``normalize_grads`` are accepted, and ``shampoo_beta=-1`` means beta2.
- ``prodigy``: ``ProdigyPlusScheduleFree`` of ``prodigy-plus-schedule-free``, the class SimpleTuner
  uses. Its ``lr`` is a multiplier of the step size Prodigy estimates: SimpleTuner's default
  settings set it to 1.0, which wins over ``learning_rate`` (``optimizer_config`` 'lr=...'
  changes it). ``prodigy_steps`` > 0 freezes the estimate after that many steps.

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

import importlib
import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from st_ray.config.options import CANONICAL


class OptimizerUnavailable(Exception):
    """The chosen optimizer cannot run here: a missing package or unsuitable hardware."""


# --- stochastic rounding and st_ray's AdamW for bf16 weights --------------------------------------


def stochastic_round_to_bf16(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float32 ``x`` rounded to bfloat16 up or down at random, with E[result] = x.

    bfloat16 is the upper half of a float32: adding a uniform random 16-bit integer to the lower
    half before truncating rounds up with probability equal to the discarded fraction.
    """
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    noise = torch.randint(
        0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator
    )
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


class AdamWBF16(Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments) computed in float32.

    For float32 parameters this is torch's AdamW. For bfloat16 parameters the moments are kept in
    bfloat16 too (6 bytes per parameter in all) and every write-back is stochastically rounded,
    so that the expected stored value is the exact float32 result; ``seed`` seeds one
    ``torch.Generator`` per device for that rounding.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 1e-2,
        seed: int = 0,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError("AdamWBF16: lr, eps and weight_decay must be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"AdamWBF16: betas must be two values in [0, 1), got {betas}")
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        )
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = float(group["lr"]), group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamWBF16 does not support sparse gradients")
                low = p.dtype == torch.bfloat16
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    moment_dtype = torch.bfloat16 if low else torch.float32
                    state["exp_avg"] = torch.zeros_like(p, dtype=moment_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=moment_dtype)
                state["step"] += 1
                t = state["step"]
                grad = p.grad.float()
                # .float() is the tensor itself when it already is float32: updated in place.
                m = state["exp_avg"].float().lerp_(grad, 1 - beta1)
                v = state["exp_avg_sq"].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                new_p = p.float().mul_(1 - lr * wd).addcdiv_(m, denom, value=-lr / (1 - beta1**t))
                for target, value in ((p, new_p), (state["exp_avg"], m), (state["exp_avg_sq"], v)):
                    if target.dtype == torch.bfloat16:
                        target.copy_(stochastic_round_to_bf16(value, self._generator(p.device)))
                    elif value is not target:
                        target.copy_(value)
        return loss


# --- the catalog of optimizers --------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSpec:
    """One ``optimizer`` choice: where its class lives and how SimpleTuner treats it."""

    name: str
    module: str  # import path of the class
    cls: str
    package: str  # pip package that provides ``module``
    defaults: Mapping[str, Any]  # SimpleTuner's default_settings for this choice
    adam_family: bool = False  # adam_beta1/2, adam_epsilon, adam_weight_decay apply
    schedule_free: bool = False  # needs optimizer.train()/eval() around evaluation
    replaces_lr_scheduler: bool = False  # SimpleTuner runs no LR scheduler with it
    warmup_in_optimizer: bool = False  # lr_warmup_steps becomes its warmup_steps
    clip_gradients: bool = True  # SimpleTuner skips max_grad_norm clipping when False
    # SimpleTuner's spellings of keys the package names differently.
    aliases: Mapping[str, str] = field(default_factory=dict)

    def load(self) -> type[Optimizer]:
        try:
            module = importlib.import_module(self.module)
        except ImportError as e:
            raise OptimizerUnavailable(
                f"optimizer {self.name!r} needs the Python package '{self.package}', which "
                f"cannot be imported here ({e}); it is one of st_ray's dependencies: reinstall "
                f"st_ray (pip install -e .) or choose another optimizer"
            ) from e
        return getattr(module, self.cls)


_ADAMW_DEFAULTS = {"betas": (0.9, 0.999), "weight_decay": 1e-2, "eps": 1e-6}
_OPTIMI_COMMON = {"decouple_lr": False, "max_lr": None, "kahan_sum": True}


def _ao(name: str, cls: str) -> OptimizerSpec:
    return OptimizerSpec(name, "torchao.optim", cls, "torchao", _ADAMW_DEFAULTS, adam_family=True)


def _schedulefree(name: str, weight_decay: float, eps: float) -> OptimizerSpec:
    return OptimizerSpec(
        name,
        "schedulefree",
        "AdamWScheduleFree",
        "schedulefree",
        {"betas": (0.9, 0.999), "weight_decay": weight_decay, "eps": eps},
        adam_family=True,
        schedule_free=True,
        replaces_lr_scheduler=True,
        warmup_in_optimizer=True,
    )


def _optimi(name: str, cls: str, defaults: dict[str, Any], **flags: Any) -> OptimizerSpec:
    return OptimizerSpec(name, "optimi", cls, "torch-optimi", defaults, **flags)


SPECS: dict[str, OptimizerSpec] = {
    s.name: s
    for s in (
        OptimizerSpec(
            "adamw_bf16", __name__, "AdamWBF16", "st_ray", _ADAMW_DEFAULTS, adam_family=True
        ),
        _ao("ao-adamw8bit", "AdamW8bit"),
        _ao("ao-adamw4bit", "AdamW4bit"),
        _ao("ao-adamfp8", "AdamFp8"),
        _ao("ao-adamwfp8", "AdamWFp8"),
        _schedulefree("adamw_schedulefree", 1e-2, 1e-8),
        _schedulefree("adamw_schedulefree+aggressive", 1e-3, 1e-6),
        _schedulefree("adamw_schedulefree+no_kahan", 1e-3, 1e-6),
        _optimi(
            "optimi-stableadamw",
            "StableAdamW",
            {"betas": (0.9, 0.99), "weight_decay": 1e-2, "eps": 1e-6, "foreach": True}
            | _OPTIMI_COMMON,
            adam_family=True,
            clip_gradients=False,
        ),
        _optimi(
            "optimi-adamw",
            "AdamW",
            {"betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.0} | _OPTIMI_COMMON,
            adam_family=True,
        ),
        _optimi(
            "optimi-lion",
            "Lion",
            {"betas": (0.9, 0.99), "weight_decay": 0.0, "foreach": True} | _OPTIMI_COMMON,
        ),
        _optimi(
            "optimi-radam",
            "RAdam",
            {"betas": (0.9, 0.99), "weight_decay": 0.0, "eps": 1e-6, "decouple_wd": True}
            | {"foreach": True}
            | _OPTIMI_COMMON,
            adam_family=True,
        ),
        _optimi(
            "optimi-ranger",
            "Ranger",
            {"betas": (0.9, 0.99), "weight_decay": 0.0, "eps": 1e-6, "k": 6, "alpha": 0.5}
            | {"decouple_wd": True, "foreach": True}
            | _OPTIMI_COMMON,
            adam_family=True,
        ),
        _optimi(
            "optimi-adan",
            "Adan",
            {"betas": (0.98, 0.92, 0.999), "weight_decay": 2e-2, "eps": 1e-6, "adam_wd": False}
            | {"foreach": True}
            | _OPTIMI_COMMON,
        ),
        _optimi(
            "optimi-adam",
            "Adam",
            {"betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.0, "decouple_wd": False}
            | _OPTIMI_COMMON,
            adam_family=True,
        ),
        _optimi(
            "optimi-sgd",
            "SGD",
            {"momentum": 0, "weight_decay": 0.0, "dampening": False, "decouple_wd": False}
            | {"torch_init": False, "foreach": True}
            | _OPTIMI_COMMON,
        ),
        OptimizerSpec(
            "soap",
            "pytorch_optimizer.optimizer.soap",
            "SOAP",
            "pytorch-optimizer",
            {
                "betas": (0.95, 0.95),
                "shampoo_beta": None,  # SimpleTuner's -1: use beta2
                "eps": 1e-8,
                "weight_decay": 0.01,
                "precondition_frequency": 10,
                "max_precondition_dim": 10000,
                "merge_dims": False,
                "precondition_1d": False,
                "normalize_gradient": False,
                "data_format": "channels_first",
                "correct_bias": True,
            },
            aliases={
                "max_precond_dim": "max_precondition_dim",
                "normalize_grads": "normalize_gradient",
            },
        ),
        OptimizerSpec(
            "prodigy",
            "prodigyplus.prodigy_plus_schedulefree",
            "ProdigyPlusScheduleFree",
            "prodigy-plus-schedule-free",
            {
                "lr": 1.0,
                "betas": (0.9, 0.99),
                "beta3": None,
                "weight_decay": 0.0,
                "weight_decay_by_lr": True,
                "use_bias_correction": False,
                "d0": 1e-6,
                "d_coef": 1,
                "prodigy_steps": 0,
                "use_speed": False,
                "eps": 1e-8,
                "split_groups": True,
                "split_groups_mean": True,
                "factored": True,
                "factored_fp32": True,
                "fused_back_pass": False,
                "use_stableadamw": True,
                "use_cautious": False,
                "use_grams": False,
                "use_adopt": False,
                "stochastic_rounding": True,
            },
            schedule_free=True,
            clip_gradients=False,
        ),
    )
}

_FP8_STATES = ("ao-adamfp8", "ao-adamwfp8")


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
    if name not in _FP8_STATES:
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

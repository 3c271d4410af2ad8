"""The catalog of ``optimizer`` choices: where each class lives and how SimpleTuner treats it.

Where each optimizer comes from:

- ``adamw_bf16``: ``AdamWBF16`` (``st_ray.train.adamw_bf16``), st_ray's own: plain AdamW math
  in float32; bf16 parameters and their moments are written back with stochastic rounding, so
  updates far below bf16's resolution still move the weights on average (SimpleTuner ships a compensated-summation
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

The factory that builds them from the options: ``st_ray.train.optimizers``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.optim import Optimizer


class OptimizerUnavailable(Exception):
    """The chosen optimizer cannot run here: a missing package or unsuitable hardware."""


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
            "adamw_bf16",
            "st_ray.train.adamw_bf16",
            "AdamWBF16",
            "st_ray",
            _ADAMW_DEFAULTS,
            adam_family=True,
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

FP8_STATES = ("ao-adamfp8", "ao-adamwfp8")

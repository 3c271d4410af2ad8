"""The training components' checks of a run's options, registered by the composition root
(``st_ray.plan``): what the optimizer, LR schedule, adapter, quantisation and attention
builders would refuse at the first step, asked before any Ray work. The builders are imported
when a check runs (they pull in torch)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from st_ray.config.errors import ProblemList
from st_ray.config.loader import LoadedConfig


def check_training_setup(loaded: LoadedConfig, problems: ProblemList) -> None:
    from st_ray.train.adapters import check_lora_options
    from st_ray.train.lr_schedules import check_schedule_options
    from st_ray.train.optimizer_specs import OptimizerUnavailable
    from st_ray.train.optimizers import check_available

    values = loaded.values
    checks = (
        ("optimizer", lambda: check_available(values)),
        (
            "lr_scheduler",
            lambda: check_schedule_options(
                values, world_size=int(values.get("num_processes") or 1)
            ),
        ),
    )
    if values.get("model_type") == "lora":
        base_dir = loaded.config_path.parent if loaded.config_path else None
        checks += (("lora_type", lambda: check_lora_options(values, base_dir)),)
    for key, check in checks:
        try:
            check()
        except (ValueError, OptimizerUnavailable) as err:
            problems.add(loaded.provenance.get(key, "configuration"), key, str(err))


def check_hardware(loaded: LoadedConfig, problems: ProblemList) -> None:
    """base_model_precision / text_encoder_N_precision and attention_mechanism that cannot run:
    a missing package, or hardware the run will not have (known when it is CPU-only)."""
    from st_ray.models.quantize import check_options

    values = loaded.values
    cpu_only = _cpu_only(values)
    for key, message in check_options(values, cpu_only=cpu_only):
        problems.add(loaded.provenance.get(key, "configuration"), key, message)
    if cpu_only:
        from st_ray.train.attention import check

        try:
            check(values.get("attention_mechanism"), "cpu")
        except ValueError as err:
            problems.add(
                loaded.provenance.get("attention_mechanism", "configuration"),
                "attention_mechanism",
                str(err),
            )


def _cpu_only(values: Mapping[str, Any]) -> bool:
    use_gpu = str(values.get("use_gpu") or "auto")
    remote = values.get("ray_address") or os.environ.get("RAY_ADDRESS")
    if use_gpu == "false":
        return True
    if use_gpu != "auto" or remote:
        return False
    import torch

    return not torch.cuda.is_available()


def check_objectives(loaded: LoadedConfig, problems: ProblemList) -> None:
    """Training objectives and regularisers that cannot apply to the run's family."""
    from st_ray.models.family import FAMILIES
    from st_ray.train import crepa, diff2flow, layersync, scheduled_sampling, tread
    from st_ray.train.lora_targets import slider_problems

    values = loaded.values
    family = FAMILIES.get(values.get("model_family"))
    if family is None:
        return  # reported by the family check
    prediction = values.get("prediction_type") or family.prediction_types[0]
    found = [
        *diff2flow.option_problems(values, prediction_type=prediction, family=family.name),
        *layersync.option_problems(values, hidden_blocks=family.hidden_blocks, family=family.name),
        *scheduled_sampling.option_problems(
            values, flow_matching=family.flow_matching, family=family.name
        ),
        *tread.option_problems(
            values, family, tread.block_count(family, values.get("pretrained_model_name_or_path"))
        ),
        *crepa.option_problems(values, hidden_blocks=family.hidden_blocks, family=family.name),
        *slider_problems(values),
        *_combination_problems(values),
    ]
    for key, message in found:
        problems.add(loaded.provenance.get(key, "configuration"), key, message)
    for note in scheduled_sampling.option_notes(values, flow_matching=family.flow_matching):
        problems.note(note)
    if values.get("diff2flow_enabled") and not values.get("diff2flow_loss"):
        problems.note(
            "diff2flow_enabled without diff2flow_loss changes nothing (as in SimpleTuner): "
            "set diff2flow_loss to train against the flow target"
        )


# Pairs this round's features were not built or tested together for: refused with the reason
# rather than failing mid-run (first option, second option, why).
_UNTESTED_PAIRS = (
    ("tread_config", "crepa_enabled", "CREPA aligns every image token of its block"),
    ("tread_config", "dynamo_backend", "TREAD's routing hooks change token counts per step"),
    ("tread_config", "controlnet", "the ControlNet families have no routed DiT blocks"),
    ("train_text_encoder", "controlnet", "ControlNet training keeps the base model frozen"),
    ("crepa_enabled", "controlnet", "CREPA hooks the frozen UNet, not the ControlNet"),
)


def _combination_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (second, f"cannot be combined with {first} yet ({why}); accepted: one or the other")
        for first, second, why in _UNTESTED_PAIRS
        if values.get(first) and values.get(second) not in (None, False, "", "no")
    ]


def check_training_modes(loaded: LoadedConfig, problems: ProblemList) -> None:
    """Gradient checkpointing, torch.compile and text-encoder training settings that cannot
    work on this run."""
    from st_ray.models import checkpointing
    from st_ray.models.family import FAMILIES
    from st_ray.train import compiling, text_training

    values = loaded.values
    family = FAMILIES.get(values.get("model_family"))
    found = [
        *checkpointing.option_problems(values),
        *compiling.option_problems(values, cpu_only=_cpu_only(values)),
    ]
    if family is not None:
        found += text_training.option_problems(values, family.text_slots)
    if (
        values.get("train_text_encoder")
        and values.get("model_type") != "lora"
        and not values.get("save_text_encoder")
    ):
        problems.note(
            "train_text_encoder with model_type 'full' and save_text_encoder off: the trained "
            "text encoders are kept in checkpoints, not in the final output"
        )
    for key, message in found:
        problems.add(loaded.provenance.get(key, "configuration"), key, message)

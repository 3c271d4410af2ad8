"""Which denoiser layers get LoRA adapters (``lora_target_modules``), and clear errors when
the chosen names match none.

The family's preset (``SPEC.lora_targets``, or the named ``SPEC.lora_presets`` its
``SPEC.lora_preset_option`` option chooses), SimpleTuner's ``DEFAULT_LORA_TARGET`` per model;
most families adapt every attention projection (to_k, to_q, to_v, to_out.0). A name matches a
module whose dotted path equals it or ends in ``.<name>``, PEFT's rule. ``peft_lora_target_modules``
replaces the preset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def lora_target_modules(family: str, options: Mapping[str, Any]) -> list[str]:
    """Module names PEFT adapts: ``peft_lora_target_modules`` when set, else the family's
    preset for these options."""
    override = options.get("peft_lora_target_modules")
    if override not in (None, "", []):
        return _parse_targets(override)
    from st_ray.models.family import get_family_module

    chosen = get_family_module(family)
    if options.get("slider_lora_target"):
        return list(chosen.spec.slider_lora_targets)
    return chosen.lora_targets(options)


def slider_problems(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Where slider_lora_target cannot act (SimpleTuner: standard PEFT LoRA only)."""
    if not options.get("slider_lora_target"):
        return []
    if options.get("model_type") != "lora":
        return [("slider_lora_target", "only applies to model_type 'lora' (a standard PEFT LoRA)")]
    if str(options.get("lora_type") or "standard").lower() == "lycoris":
        return [
            (
                "slider_lora_target",
                "only affects a standard PEFT LoRA (as in SimpleTuner); with lora_type "
                "'lycoris' list the slider modules in lycoris_config's apply_preset.target_module",
            )
        ]
    if options.get("peft_lora_target_modules") not in (None, "", []):
        return [
            (
                "slider_lora_target",
                "cannot be combined with peft_lora_target_modules, which names the targets "
                "itself (SimpleTuner lets peft_lora_target_modules win); set one of them",
            )
        ]
    return []


def _parse_targets(value: Any) -> list[str]:
    """A JSON list of module names, given as a list, a JSON string or a path to a JSON file."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:
            path = Path(text)
            if not path.is_file():
                raise ValueError(
                    f"peft_lora_target_modules: {text!r} is neither a JSON list nor a JSON file"
                )
            value = json.loads(path.read_text())
    if not isinstance(value, list | tuple):
        raise ValueError(
            f"peft_lora_target_modules must be a list of module names, got {type(value).__name__}"
        )
    names = []
    for entry in value:
        if entry in (None, "", "None"):  # SimpleTuner skips empty entries
            continue
        if not isinstance(entry, str):
            raise ValueError(f"peft_lora_target_modules entries must be strings, got {entry!r}")
        if entry.strip():
            names.append(entry.strip())
    if not names:
        raise ValueError("peft_lora_target_modules is empty")
    return names


def matching_modules(denoiser: torch.nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of ``denoiser``'s modules that ``targets`` select (PEFT's list-matching rule)."""
    return [
        name
        for name, _ in denoiser.named_modules()
        if name and any(name == t or name.endswith("." + t) for t in targets)
    ]


def _targets_source(family: str, options: Mapping[str, Any]) -> str:
    if options.get("peft_lora_target_modules") not in (None, "", []):
        return "peft_lora_target_modules"
    if options.get("slider_lora_target"):
        return "slider_lora_target's module set"
    from st_ray.models.family import get_family_module

    # A family whose preset is chosen by an option names it, with the preset chosen.
    chosen = get_family_module(family)
    if chosen.spec.lora_preset_option:
        return f"{chosen.spec.lora_preset_option} {chosen.lora_preset(options)!r}"
    return f"the {family} LoRA preset"


def _adaptable_examples(denoiser: torch.nn.Module, limit: int = 12) -> list[str]:
    """Short names (as a target would spell them) of layers PEFT can adapt, for error messages."""
    seen: list[str] = []
    for name, module in denoiser.named_modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        parts = name.split(".")
        short = ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
        if short not in seen:
            seen.append(short)
    return seen[:limit]


def require_matches(
    denoiser: torch.nn.Module, family: str, options: Mapping[str, Any], targets: Sequence[str]
) -> None:
    if matching_modules(denoiser, targets):
        return
    full = [n for n, m in denoiser.named_modules() if isinstance(m, torch.nn.Linear)][:3]
    raise ValueError(
        f"{_targets_source(family, options)} {list(targets)} matches no module of the {family} "
        f"denoiser ({type(denoiser).__name__}); its layers are named like "
        f"{', '.join(_adaptable_examples(denoiser))} (full paths such as {', '.join(full)})"
    )

"""LyCORIS adapters (``lora_type: lycoris``) through the ``lycoris-lora`` package.

``lycoris_config`` is the JSON file SimpleTuner and the LyCORIS tools use::

    {"algo": "lokr", "multiplier": 1.0, "linear_dim": 10000, "linear_alpha": 1, "factor": 16,
     "apply_preset": {"target_module": ["Attention", "FeedForward"],
                      "module_algo_map": {"Attention": {"factor": 16},
                                          "FeedForward": {"factor": 8}}}}

``algo`` is any of the library's algorithms (lora/locon, loha, lokr, full, dylora, glora,
diag-oft, boft, ia3, tlora); every other key (factor, full_matrix, decompose_both, use_tucker,
use_scalar, dora_wd, conv_dim, conv_alpha, dropout, rank_dropout, module_dropout, bypass_mode,
``preset``...) goes to ``lycoris.create_lycoris`` as the library defines it; ``apply_preset``
goes to ``LycorisNetwork.apply_preset`` first (target_module, target_name, module_algo_map,
name_algo_map, exclude_name, use_fnmatch). The library keeps presets in class attributes,
so they are reset to its defaults before every network is built (one run never inherits
another's targets). diffusers names some attention classes per family (e.g.
``<Family>Attention``): a class name in ``target_module``/``module_algo_map`` also matches the
model's classes whose names end with it, so the common ``["Attention", "FeedForward"]``
config works for every family.

The network is attached to the denoiser as the submodule ``lycoris`` (``ATTR``), so the
optimizer, EMA and DDP see its parameters like any other trainable ones. Quantised base
layers (quanto, bitsandbytes, fp8) run in the library's bypass mode (W x + dW x).

Saved files: ``pytorch_lora_weights.safetensors`` written by the network's ``save_weights``
(keys ``lycoris_<module path with _>.<tensor>``, the layout ``create_lycoris_from_weights``,
ComfyUI and the A1111 tools read, with the config in the ``lycoris_config`` header entry) and
``lycoris_config.json`` next to it. Loading for inference::

    from lycoris import create_lycoris_from_weights
    network, _ = create_lycoris_from_weights(1.0, "pytorch_lora_weights.safetensors",
                                             pipeline.transformer)   # or pipeline.unet
    network.merge_to()        # or network.apply_to() to keep it switchable

``init_lokr_norm``: every LoKr module starts with w1 = 1 and w2 drawn from a normal
distribution with the base weight's mean and spread, times the scale (SimpleTuner's "perturbed
normal" start), instead of w2 = 0; it needs unfactored w1 and w2 (a large ``linear_dim``, the
full-rank setting).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

ATTR = "lycoris"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CONFIG_NAME = "lycoris_config.json"
# Keys create_lycoris reads itself (the rest of the config is passed through).
_NETWORK_KEYS = ("multiplier", "linear_dim", "linear_alpha", "apply_preset")
_PRESET_DEFAULTS: dict[str, Any] | None = None


def enabled(options: Mapping[str, Any]) -> bool:
    return options.get("model_type", "lora") == "lora" and options.get("lora_type") == "lycoris"


def config_path(path: str | Path, base_dir: Path | None = None) -> Path:
    """A relative lycoris_config is read from the working directory, else from the folder of
    the run's config file (like every other st_ray path)."""
    file = Path(str(path)).expanduser()
    if not file.is_absolute() and not file.exists() and base_dir is not None:
        return Path(base_dir) / file
    return file


def read_config(path: str | Path, base_dir: Path | None = None) -> dict[str, Any]:
    """The lycoris_config file, checked: a JSON object with a known ``algo`` and preset keys
    the library accepts."""
    from lycoris.config_sdk import VALID_PRESET_KEYS
    from lycoris.wrapper import network_module_dict

    file = config_path(path, base_dir)
    if not file.is_file():
        raise ValueError(
            f"lycoris_config: file '{file}' does not exist; lora_type 'lycoris' needs a JSON "
            'file such as {"algo": "lokr", "multiplier": 1.0, "linear_dim": 10000, '
            '"linear_alpha": 1, "factor": 16}'
        )
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"lycoris_config: {file} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"lycoris_config: {file} must hold a JSON object")
    algo = str(config.get("algo", "lora")).lower()
    if algo not in network_module_dict:
        raise ValueError(
            f"lycoris_config: {file}: algo {algo!r} is not a LyCORIS algorithm; accepted: "
            + ", ".join(network_module_dict)
        )
    preset = config.get("apply_preset") or {}
    if not isinstance(preset, dict):
        raise ValueError(f"lycoris_config: {file}: apply_preset must be an object")
    unknown = sorted(set(preset) - set(VALID_PRESET_KEYS))
    if unknown:
        raise ValueError(
            f"lycoris_config: {file}: apply_preset keys {', '.join(unknown)} are unknown; "
            f"accepted: {', '.join(VALID_PRESET_KEYS)}"
        )
    for key in ("linear_dim", "linear_alpha", "multiplier"):
        if key in config and not isinstance(config[key], int | float):
            raise ValueError(f"lycoris_config: {file}: {key} must be a number")
    return config


def check_options(options: Mapping[str, Any], base_dir: Path | None = None) -> None:
    """What add_lycoris would refuse, without a model (for config validation)."""
    if not enabled(options):
        for key in ("init_lokr_norm",):
            if options.get(key) is not None:
                raise ValueError(f"{key} only applies to lora_type 'lycoris'")
        return
    config = read_config(options.get("lycoris_config") or "", base_dir)
    if options.get("init_lokr_norm") is not None and str(config.get("algo")).lower() != "lokr":
        raise ValueError(
            f"init_lokr_norm initialises LoKr factors, but lycoris_config's algo is "
            f"{config.get('algo')!r}; unset init_lokr_norm or use algo 'lokr'"
        )
    if (options.get("lora_format") or "diffusers") != "diffusers":
        raise ValueError(
            "lora_format 'comfyui' is for PEFT LoRAs; LyCORIS weights are saved in the LyCORIS "
            "layout, which ComfyUI and the LyCORIS tools load as is: use lora_format 'diffusers'"
        )


# --- building --------------------------------------------------------------------------------


def _reset_presets() -> None:
    """Put LycorisNetwork's class-level preset state back to the library's defaults."""
    global _PRESET_DEFAULTS
    from lycoris import LycorisNetwork

    names = (
        "ENABLE_CONV",
        "TARGET_REPLACE_MODULE",
        "TARGET_REPLACE_NAME",
        "MODULE_ALGO_MAP",
        "NAME_ALGO_MAP",
        "LORA_PREFIX",
        "USE_FNMATCH",
        "TARGET_EXCLUDE_NAME",
    )
    if _PRESET_DEFAULTS is None:
        _PRESET_DEFAULTS = {n: copy.deepcopy(getattr(LycorisNetwork, n)) for n in names}
    for name, value in _PRESET_DEFAULTS.items():
        setattr(LycorisNetwork, name, copy.deepcopy(value))


def expand_class_names(preset: Mapping[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """``preset`` with each target_module / module_algo_map class name also naming the
    model's classes that end with it (e.g. <Family>Attention for Attention)."""
    classes = {type(m).__name__ for m in model.modules()}
    out = dict(preset)

    def variants(name: str) -> list[str]:
        return sorted(c for c in classes if c != name and c.endswith(name))

    if "target_module" in out:
        targets = list(out["target_module"])
        out["target_module"] = targets + [v for t in targets for v in variants(t)]
    if "module_algo_map" in out:
        mapping = dict(out["module_algo_map"])
        for name, conf in list(mapping.items()):
            for variant in variants(name):
                mapping.setdefault(variant, conf)
        out["module_algo_map"] = mapping
    return out


def add_lycoris(
    denoiser: torch.nn.Module, options: Mapping[str, Any], base_dir: Path | None = None
) -> Any:
    """Build the lycoris_config network on ``denoiser`` (frozen already), apply it and attach
    it as ``denoiser.lycoris``; returns the network (its parameters train)."""
    from lycoris import LycorisNetwork, create_lycoris

    check_options(options, base_dir)
    if getattr(denoiser, ATTR, None) is not None:
        raise ValueError(f"{type(denoiser).__name__} already carries a LyCORIS network")
    config = read_config(options["lycoris_config"], base_dir)
    _reset_presets()
    preset = config.get("apply_preset") or {}
    if preset:
        LycorisNetwork.apply_preset(expand_class_names(preset, denoiser))
    kwargs = {k: v for k, v in config.items() if k not in _NETWORK_KEYS}
    network = create_lycoris(
        denoiser,
        float(config.get("multiplier", 1.0)),
        int(config.get("linear_dim", 4)),
        float(config.get("linear_alpha", 1)),
        warn_on_unmatched=False,
        **kwargs,
    )
    if not network.loras:
        classes = sorted({type(m).__name__ for m in denoiser.modules()})
        raise ValueError(
            f"lycoris_config {options['lycoris_config']}: its targets match no module of "
            f"{type(denoiser).__name__}; its module classes are {', '.join(classes[:20])}"
        )
    network.apply_to()
    network.requires_grad_(True)
    device = next(p.device for p in denoiser.parameters())
    network.to(device)
    if options.get("init_lora"):
        loaded = network.load_weights(str(options["init_lora"]))
        if loaded:
            raise ValueError(
                f"init_lora {options['init_lora']}: does not fit the network: {loaded}"
            )
    if options.get("init_lokr_norm") is not None:
        init_lokr_perturbed_normal(network, float(options["init_lokr_norm"]))
    denoiser.add_module(ATTR, network)
    network.st_ray_config = config  # what save() writes next to the weights
    return network


def network_of(denoiser: torch.nn.Module) -> Any | None:
    return getattr(denoiser, ATTR, None)


@torch.no_grad()
def init_lokr_perturbed_normal(network: Any, scale: float) -> None:
    """w1 = 1 and w2 ~ the base weight's statistics x ``scale`` for every LoKr module."""
    for module in network.loras:
        if not (hasattr(module, "lokr_w1") and hasattr(module, "lokr_w2")):
            raise ValueError(
                f"init_lokr_norm needs LoKr modules with unfactored w1 and w2 (raise linear_dim "
                f"in lycoris_config, e.g. 10000 for full rank); {module.lora_name} is factored"
            )
        module.lokr_w1.fill_(1.0)
        base = module.org_weight.float()
        draw = torch.randn(module.lokr_w2.shape, device=base.device)
        draw = (draw - draw.mean()) / draw.std().clamp_min(1e-12)
        draw = draw * base.std() + base.mean()
        module.lokr_w2.copy_((draw * scale).to(module.lokr_w2.dtype))


# --- state, saving, validation ---------------------------------------------------------------


def state_dict(denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's tensors (its own keys, as saved), detached CPU copies."""
    network = _require(denoiser)
    return {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}


def load_state_dict(denoiser: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    network = _require(denoiser)
    missing, unexpected = network.load_state_dict(dict(state), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"LyCORIS weights do not fit the network: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


def save(
    denoiser: torch.nn.Module, out_dir: str | Path, metadata: Mapping[str, str] | None = None
) -> list[str]:
    """``out_dir/pytorch_lora_weights.safetensors`` + ``lycoris_config.json``; the names."""
    network = _require(denoiser)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = getattr(network, "st_ray_config", {})
    header = {"lycoris_config": json.dumps(config), **dict(metadata or {})}
    dtype = next(network.parameters()).dtype
    network.save_weights(str(out / WEIGHT_NAME), dtype, header)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return [WEIGHT_NAME, CONFIG_NAME]


@contextlib.contextmanager
def strength(denoiser: torch.nn.Module, multiplier: float | None) -> Iterator[None]:
    """validation_lycoris_strength: the network's multiplier for the block, then back."""
    network = network_of(denoiser)
    if network is None or multiplier is None:
        yield
        return
    before = network.multiplier
    network.set_multiplier(float(multiplier))
    try:
        yield
    finally:
        network.set_multiplier(before)


def _require(denoiser: torch.nn.Module) -> Any:
    network = network_of(denoiser)
    if network is None:
        raise ValueError(f"{type(denoiser).__name__} has no LyCORIS network")
    return network

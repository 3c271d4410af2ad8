"""LoRA adapters on the denoiser (PEFT): options, adding the adapter, its state and files.

Which layers get adapters: ``st_ray.train.lora_targets``; the export in the layouts other tools
load (``save_lora``): ``st_ray.train.lora_export``.

The adapter is PEFT's LoRA named ``default``, added through diffusers' ``add_adapter`` (PixArt's
transformer lacks diffusers' PEFT mixin, so PEFT's ``inject_adapter_in_model`` is called
directly); both freeze every base parameter.

PiSSA, OLoRA and LoftQ initialisation move part of each base weight into the adapter (W_res =
W - B0 A0). The initial A0/B0 are kept on the denoiser and the export is PEFT's conversion to a
plain LoRA against the original base: A' = [A; A0], B' = [B, -B0], rank and alpha doubled.
It is exact for PiSSA/OLoRA; LoftQ also replaced W by its NF4 round-trip, so there it is
approximate. Resume re-runs the (deterministic) initialisation, then ``load_lora_state_dict``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from st_ray.train.lora_targets import lora_target_modules, require_matches

ADAPTER = "default"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# diffusers' LORA_ADAPTER_METADATA_KEY: the safetensors header entry holding the LoraConfig.
METADATA_KEY = "lora_adapter_metadata"

# lora_init_type -> LoraConfig(init_lora_weights=...).
INIT_WEIGHTS: dict[str, bool | str] = {
    "default": True,
    "gaussian": "gaussian",
    "loftq": "loftq",
    "olora": "olora",
    "pissa": "pissa",
}
# Initialisations that rewrite the base weights (W_res = W - B0 A0); see the module docstring.
_BASE_MUTATING = ("loftq", "olora", "pissa")
# Attribute on the denoiser holding A0/B0 of a base-mutating initialisation.
INITIAL_LORA_ATTR = "_st_ray_initial_lora"
KOHYA_PREFIX = "lora_unet_"

# Key suffixes of LoRA files -> PEFT's (Kohya, old diffusers and PEFT spellings).
_SUFFIXES = (
    (".lora_A.weight", "lora_A.weight"),
    (".lora.down.weight", "lora_A.weight"),
    (".lora_down.weight", "lora_A.weight"),
    (".lora_B.weight", "lora_B.weight"),
    (".lora.up.weight", "lora_B.weight"),
    (".lora_up.weight", "lora_B.weight"),
    (".lora_magnitude_vector", "lora_magnitude_vector"),
    (".alpha", "alpha"),
)
# Leading component names a LoRA file may put before the denoiser's module path.
_PREFIXES = (
    "unet.",
    "transformer.",
    "base_model.model.",
    "model.diffusion_model.",
    "diffusion_model.",
)


# --- adding the adapter ----------------------------------------------------------------------


def check_lora_options(options: Mapping[str, Any], base_dir: Path | None = None) -> None:
    """Option combinations this module cannot honour; cheap, so the plan can call it early.
    ``base_dir`` (the config file's folder) resolves a relative lycoris_config."""
    from st_ray.train import lycoris_adapter

    lycoris_adapter.check_options(options, base_dir)
    if lycoris_adapter.enabled(options):
        return  # the LyCORIS network is described by lycoris_config, not the PEFT options
    if options.get("peft_lora_mode", "standard") != "standard":
        raise ValueError(
            f"peft_lora_mode {options['peft_lora_mode']!r} is not supported: no maintained "
            "package provides SingLoRA for PEFT (peft-singlora has one 2025 release); use "
            "peft_lora_mode 'standard'"
        )
    init = options.get("lora_init_type") or "default"
    if init not in INIT_WEIGHTS:
        raise ValueError(f"lora_init_type {init!r} is not one of {', '.join(INIT_WEIGHTS)}")
    if init in _BASE_MUTATING and options.get("use_dora"):
        raise ValueError(
            f"use_dora cannot be combined with lora_init_type {init!r} (which rewrites the base "
            "weights); use lora_init_type 'default' or 'gaussian'"
        )
    if init in _BASE_MUTATING and options.get("init_lora"):
        raise ValueError(
            f"init_lora starts from existing adapter weights, so lora_init_type {init!r} "
            "(which rewrites the base weights) cannot be used with it"
        )
    if options.get("use_dora") and options.get("lora_format") == "comfyui":
        raise ValueError(
            "use_dora cannot be saved with lora_format 'comfyui': ComfyUI's DoRA scale "
            "normalises the weight along the other axis than PEFT's magnitude vector; "
            "use lora_format 'diffusers'"
        )


def lora_config(family: str, options: Mapping[str, Any], **overrides: Any):
    """The ``peft.LoraConfig`` for ``options`` (``overrides`` win, e.g. an init file's ranks)."""
    from peft import LoftQConfig, LoraConfig

    check_lora_options(options)
    rank = int(options.get("lora_rank") or 16)
    alpha = options.get("lora_alpha")
    init = options.get("lora_init_type") or "default"
    kwargs: dict[str, Any] = dict(
        r=rank,
        lora_alpha=float(rank if alpha is None else alpha),
        lora_dropout=float(options.get("lora_dropout") or 0.0),
        init_lora_weights=INIT_WEIGHTS[init],
        use_dora=bool(options.get("use_dora")),
        target_modules=lora_target_modules(family, options),
    )
    if init == "loftq":
        kwargs["loftq_config"] = LoftQConfig(loftq_bits=4)  # PEFT requires one for LoftQ
    kwargs.update(overrides)
    return LoraConfig(**kwargs)


def add_lora(denoiser: torch.nn.Module, family: str, options: Mapping[str, Any]) -> None:
    """Add the run's LoRA adapter to ``denoiser`` in place; only adapter parameters stay
    trainable. ``init_lora`` loads starting weights; its ranks and alphas replace lora_rank /
    lora_alpha (as in SimpleTuner), the targets stay the configured ones and every tensor must
    match one adapter tensor."""
    check_lora_options(options)
    if getattr(denoiser, "peft_config", None):
        raise ValueError(f"{type(denoiser).__name__} already carries a LoRA adapter")
    targets = lora_target_modules(family, options)
    require_matches(denoiser, family, options, targets)
    init = options.get("lora_init_type") or "default"
    if init == "loftq" and not torch.cuda.is_available():
        raise ValueError("lora_init_type 'loftq' needs a CUDA GPU (bitsandbytes NF4 quantisation)")

    init_state: dict[str, torch.Tensor] | None = None
    overrides: dict[str, Any] = {}
    if options.get("init_lora"):
        init_state, overrides = read_lora_file(options["init_lora"], denoiser)
    config = lora_config(family, options, **overrides)

    if hasattr(denoiser, "add_adapter"):
        denoiser.add_adapter(config, adapter_name=ADAPTER)
    else:  # PixArtTransformer2DModel has no diffusers PeftAdapterMixin
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, denoiser, adapter_name=ADAPTER)
    if init_state is not None:
        try:
            load_lora_state_dict(denoiser, init_state)
        except ValueError as err:
            raise ValueError(f"init_lora {options['init_lora']}: {err}") from None
    if init in _BASE_MUTATING:
        initial = {k: v.detach().clone() for k, v in lora_state_dict(denoiser).items()}
        setattr(denoiser, INITIAL_LORA_ATTR, initial)


# --- state dicts -----------------------------------------------------------------------------


def lora_state_dict(denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors in PEFT keys (``<module>.lora_A.weight``, ``.lora_B.weight``,
    ``.lora_magnitude_vector``), sharing storage with the parameters like ``state_dict()``."""
    from peft.utils import get_peft_model_state_dict

    if not getattr(denoiser, "peft_config", None):
        raise ValueError(f"{type(denoiser).__name__} has no LoRA adapter")
    return get_peft_model_state_dict(denoiser, adapter_name=ADAPTER)


def load_lora_state_dict(denoiser: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (``lora_state_dict``'s keys) into the adapter; every key and shape must
    match exactly."""
    from peft.utils import set_peft_model_state_dict

    expected = lora_state_dict(denoiser)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} adapter tensors missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected tensors that match no adapted module "
            f"(e.g. {', '.join(unexpected[:3])})"
        )
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs adapter {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (rank?) e.g. {'; '.join(shapes[:3])}")
    if problems:
        raise ValueError("LoRA weights do not fit the adapter: " + "; ".join(problems))
    set_peft_model_state_dict(denoiser, dict(state), adapter_name=ADAPTER)


def read_lora_file(
    path: str | Path, denoiser: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A LoRA .safetensors file (PEFT, diffusers, or this module's ComfyUI layouts) as PEFT-key
    tensors for ``denoiser`` plus the LoraConfig fields it implies (r, lora_alpha and their
    per-module patterns; alpha defaults to the rank, i.e. scale 1, like diffusers' loader)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    kohya = {
        KOHYA_PREFIX + name.replace(".", "_"): name for name, _ in denoiser.named_modules() if name
    }
    state: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for key, value in tensors.items():
        module, kind = _split_key(key, kohya)
        if kind == "alpha":
            alphas[module] = float(value.float().item())
        elif kind:
            state[f"{module}.{kind}"] = value
        else:
            state[key] = value  # not a LoRA tensor name: kept as-is, reported unexpected
    ranks = {
        k[: -len(".lora_A.weight")]: int(v.shape[0])
        for k, v in state.items()
        if k.endswith(".lora_A.weight")
    }
    if not ranks:
        raise ValueError(f"init_lora {path}: no LoRA A/B tensors found")

    meta = json.loads(header[METADATA_KEY]) if METADATA_KEY in header else {}
    meta = {_strip_prefix(k): v for k, v in meta.items()}
    if not alphas and "lora_alpha" in meta:
        # The file's own LoraConfig knows alpha; its patterns are PEFT patterns already.
        fields = ("r", "lora_alpha", "rank_pattern", "alpha_pattern")
        return state, {k: meta[k] for k in fields if k in meta}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    per_alpha = {m: alphas.get(m, float(r)) for m, r in ranks.items()}
    alpha = Counter(per_alpha.values()).most_common(1)[0][0]
    # "^" anchors a pattern to the whole module path (PEFT >= 0.15), as diffusers does.
    return state, {
        "r": rank,
        "lora_alpha": alpha,
        "rank_pattern": {f"^{m}": r for m, r in ranks.items() if r != rank},
        "alpha_pattern": {f"^{m}": a for m, a in per_alpha.items() if a != alpha},
    }


def _strip_prefix(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _split_key(key: str, kohya: Mapping[str, str]) -> tuple[str, str]:
    """(module path, PEFT tensor name) of one LoRA file key."""
    for suffix, kind in _SUFFIXES:
        if key.endswith(suffix):
            module = key[: -len(suffix)]
            if module.startswith(KOHYA_PREFIX):
                return kohya.get(module, module), kind
            return _strip_prefix(module), kind
    return key, ""

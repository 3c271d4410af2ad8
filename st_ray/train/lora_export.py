"""Export of the run's LoRA adapter in the layouts other tools load: ``save_lora`` writes
``pytorch_lora_weights.safetensors`` in ``out_dir``, as ``lora_format``:

- ``diffusers``: PEFT keys under the denoiser's component name, ``unet.<module>.lora_A.weight``
  / ``.lora_B.weight`` (``.lora_magnitude_vector`` with DoRA) or ``transformer.<module>...``,
  with the adapter's ``LoraConfig`` in the ``lora_adapter_metadata`` header, written by the
  family pipeline's ``save_lora_weights`` (``unet_lora_layers=`` for StableDiffusionPipeline and
  StableDiffusionXLPipeline, ``transformer_lora_layers=`` for FluxPipeline and
  StableDiffusion3Pipeline), so ``pipeline.load_lora_weights(out_dir)`` loads it. This is the
  layout SimpleTuner and diffusers' ``save_lora_adapter`` write; diffusers'
  ``convert_state_dict_to_diffusers`` would rename only the to_q/k/v/out.0 keys.
  PixArtSigmaPipeline has no LoRA loader in diffusers 0.42 (and its transformer no PEFT mixin):
  the same ``transformer.`` layout is written directly. It loads with diffusers'
  ``load_lora_adapter(out_dir, prefix="transformer")`` on the transformer class given
  ``diffusers.loaders.PeftAdapterMixin`` (as SimpleTuner's PixArt class has it), or with PEFT:
  ``inject_adapter_in_model(LoraConfig(**metadata), transformer)`` then
  ``set_peft_model_state_dict``.
- ``comfyui``: the keys ComfyUI maps for each family (SimpleTuner's per-family conversion):
  UNet families (``SPEC.denoiser`` "unet") use Kohya names, ``lora_unet_<module with . -> _>``
  + ``.lora_down.weight`` (A) / ``.lora_up.weight`` (B) / ``.alpha``; transformer families
  keep ``transformer.<module>`` + ``.lora_A.weight`` / ``.lora_B.weight`` / ``.alpha``.
  ``.alpha`` is a float32 scalar; the update is
  (alpha / rank) * B @ A. A bare ``diffusion_model.<diffusers module>`` prefix is not used:
  ComfyUI maps ``diffusion_model.*`` to its own (LDM / BFL) module names, so such keys would not
  load. DoRA has no ComfyUI equivalent (its ``dora_scale`` normalises the other weight axis)
  and is refused.

Base-mutating initialisations (PiSSA, OLoRA, LoftQ; ``st_ray.train.adapters``) are exported as
a plain LoRA against the original base: A' = [A; A0], B' = [B, -B0], rank and alpha doubled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from st_ray.train.adapters import (
    ADAPTER,
    INITIAL_LORA_ATTR,
    KOHYA_PREFIX,
    METADATA_KEY,
    WEIGHT_NAME,
    lora_state_dict,
)

LORA_FORMATS = ("diffusers", "comfyui")


def export_lora(denoiser: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapter as a plain LoRA on the original base weights: PEFT-key CPU tensors and the
    matching LoraConfig as a JSON-ready dict (what loaders rebuild the adapter from)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(denoiser).items()}
    config = denoiser.peft_config[ADAPTER].to_dict()
    config["target_modules"] = sorted(config["target_modules"] or [])
    config["init_lora_weights"] = True  # loaders must not re-run PiSSA & co. on their base
    config["loftq_config"] = {}
    initial = getattr(denoiser, INITIAL_LORA_ATTR, None)
    if initial is not None:
        # W + dW = W_res + s B A and W = W_res + s B0 A0, so dW = s [B, -B0] [A; A0]: a
        # rank-2r LoRA whose alpha doubles to keep s = alpha / r.
        for key, value in state.items():
            start = initial[key].to("cpu")
            if key.endswith(".lora_A.weight"):
                state[key] = torch.cat([value, start], dim=0)
            elif key.endswith(".lora_B.weight"):
                state[key] = torch.cat([value, -start], dim=1)
        # rsLoRA scales by alpha / sqrt(r), so there alpha grows by sqrt(2).
        factor = math.sqrt(2.0) if config.get("use_rslora") else 2.0
        config["r"] *= 2
        config["lora_alpha"] *= factor
        config["rank_pattern"] = {k: v * 2 for k, v in (config["rank_pattern"] or {}).items()}
        config["alpha_pattern"] = {
            k: v * factor for k, v in (config["alpha_pattern"] or {}).items()
        }
    return state, json.loads(json.dumps(config, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "__dict__"):
        return vars(value)
    return str(value)


def _module_alphas(denoiser: torch.nn.Module, doubled: bool) -> dict[str, float]:
    """Each adapted module's effective alpha (PEFT's per-layer value, after rank patterns)."""
    from peft.tuners.lora import LoraLayer

    factor = 2.0 if doubled else 1.0
    return {
        name: float(module.lora_alpha[ADAPTER]) * factor
        for name, module in denoiser.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_alpha
    }


def comfyui_state_dict(
    family: str, state: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
) -> dict[str, torch.Tensor]:
    """PEFT-key LoRA tensors renamed to the ComfyUI layout of ``family`` (module docstring),
    with one ``.alpha`` per module."""
    from st_ray.models.family import get_family

    unet = get_family(family).denoiser == "unet"
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for peft_suffix, comfy_suffix in (
            (".lora_A.weight", ".lora_down.weight" if unet else ".lora_A.weight"),
            (".lora_B.weight", ".lora_up.weight" if unet else ".lora_B.weight"),
        ):
            if key.endswith(peft_suffix):
                module = key[: -len(peft_suffix)]
                name = KOHYA_PREFIX + module.replace(".", "_") if unet else f"transformer.{module}"
                out[name + comfy_suffix] = value
                if peft_suffix == ".lora_A.weight":
                    out[name + ".alpha"] = torch.tensor(alphas[module], dtype=torch.float32)
                break
        else:
            raise ValueError(f"{key}: no ComfyUI equivalent (DoRA magnitude?)")
    return out


def save_lora(
    denoiser: torch.nn.Module,
    family: str,
    out_dir: str | Path,
    *,
    lora_format: str = "diffusers",
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` in ``lora_format`` (module docstring)
    and return its path. ``metadata`` adds string entries to the safetensors header (other
    values are stored as JSON)."""
    import diffusers
    from safetensors.torch import save_file

    from st_ray.models import get_family

    if lora_format not in LORA_FORMATS:
        raise ValueError(f"lora_format {lora_format!r} is not one of {', '.join(LORA_FORMATS)}")
    spec = get_family(family)
    component = spec.denoiser  # "unet" or "transformer": diffusers' key prefix
    state, config = export_lora(denoiser)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / WEIGHT_NAME
    header = {
        "format": "pt",
        METADATA_KEY: json.dumps(
            {f"{component}.{k}": v for k, v in config.items()}, indent=2, sort_keys=True
        ),
    }
    pipeline_cls = getattr(diffusers, spec.pipeline_class)
    if lora_format == "comfyui":
        doubled = getattr(denoiser, INITIAL_LORA_ATTR, None) is not None
        save_file(
            comfyui_state_dict(family, state, _module_alphas(denoiser, doubled)), path, header
        )
    elif hasattr(pipeline_cls, "save_lora_weights"):
        pipeline_cls.save_lora_weights(
            out,
            weight_name=WEIGHT_NAME,
            **{f"{component}_lora_layers": state, f"{component}_lora_adapter_metadata": config},
        )
    else:  # no LoRA loader: the layout diffusers' transformer loaders read, written directly
        save_file({f"{component}.{k}": v for k, v in state.items()}, path, header)
    if metadata:
        _add_header(path, metadata)
    return path


def _add_header(path: Path, extra: Mapping[str, Any]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    clash = {"format", METADATA_KEY} & set(extra)
    if clash:
        raise ValueError(f"metadata may not override {', '.join(sorted(clash))}")
    with safe_open(str(path), framework="pt") as handle:
        header = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    header.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    save_file(tensors, path, header)


def add_component_loras(
    path: Path, loras: Mapping[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]
) -> None:
    """Add other pipeline components' LoRAs (``{component: export_lora(model)}``, e.g. the
    trained text encoders) to the diffusers LoRA file at ``path``: tensors under
    ``<component>.<PEFT key>`` and each LoraConfig under the same prefix in the
    ``lora_adapter_metadata`` header, where ``pipeline.load_lora_weights`` finds them."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        header = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    configs = json.loads(header.get(METADATA_KEY) or "{}")
    for component, (state, config) in loras.items():
        tensors.update({f"{component}.{k}": v for k, v in state.items()})
        configs.update({f"{component}.{k}": v for k, v in config.items()})
    header[METADATA_KEY] = json.dumps(configs, indent=2, sort_keys=True)
    header.setdefault("format", "pt")
    save_file(tensors, path, header)

"""LoRA adapters on the denoiser (PEFT) and their export in the layouts other tools load.

Which layers get adapters (``lora_target_modules``): the family's preset (``SPEC.lora_targets``,
or the named ``SPEC.lora_presets`` its ``SPEC.lora_preset_option`` option chooses), SimpleTuner's
``DEFAULT_LORA_TARGET`` per model; most families adapt every attention projection (to_k, to_q,
to_v, to_out.0). A name matches a module whose
dotted path equals it or ends in ``.<name>``, PEFT's rule. ``peft_lora_target_modules``
replaces the preset.

The adapter is PEFT's LoRA named ``default``, added through diffusers' ``add_adapter`` (PixArt's
transformer lacks diffusers' PEFT mixin, so PEFT's ``inject_adapter_in_model`` is called
directly); both freeze every base parameter.

Export, ``pytorch_lora_weights.safetensors`` in ``out_dir`` (``save_lora``):

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
  keep ``transformer.<module>`` + ``.lora_A.weight`` /
  ``.lora_B.weight`` / ``.alpha``. ``.alpha`` is a float32 scalar; the update is
  (alpha / rank) * B @ A. A bare ``diffusion_model.<diffusers module>`` prefix is not used:
  ComfyUI maps ``diffusion_model.*`` to its own (LDM / BFL) module names, so such keys would not
  load. DoRA has no ComfyUI equivalent (its ``dora_scale`` normalises the other weight axis)
  and is refused.

PiSSA, OLoRA and LoftQ initialisation move part of each base weight into the adapter (W_res =
W - B0 A0). The initial A0/B0 are kept on the denoiser and the export is PEFT's conversion to a
plain LoRA against the original base: A' = [A; A0], B' = [B, -B0], rank and alpha doubled.
It is exact for PiSSA/OLoRA; LoftQ also replaced W by its NF4 round-trip, so there it is
approximate. Resume re-runs the (deterministic) initialisation, then ``load_lora_state_dict``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

ADAPTER = "default"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# diffusers' LORA_ADAPTER_METADATA_KEY: the safetensors header entry holding the LoraConfig.
METADATA_KEY = "lora_adapter_metadata"
LORA_FORMATS = ("diffusers", "comfyui")

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
_INITIAL_ATTR = "_st_ray_initial_lora"
_KOHYA_PREFIX = "lora_unet_"

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


# --- targets ---------------------------------------------------------------------------------


def lora_target_modules(family: str, options: Mapping[str, Any]) -> list[str]:
    """Module names PEFT adapts: ``peft_lora_target_modules`` when set, else the family's
    preset for these options."""
    override = options.get("peft_lora_target_modules")
    if override not in (None, "", []):
        return _parse_targets(override)
    from st_ray.models.family import get_family_module

    return get_family_module(family).lora_targets(options)


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


def _require_matches(
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
    _require_matches(denoiser, family, options, targets)
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
        setattr(denoiser, _INITIAL_ATTR, initial)


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
        _KOHYA_PREFIX + name.replace(".", "_"): name for name, _ in denoiser.named_modules() if name
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
            if module.startswith(_KOHYA_PREFIX):
                return kohya.get(module, module), kind
            return _strip_prefix(module), kind
    return key, ""


# --- export ----------------------------------------------------------------------------------


def export_lora(denoiser: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapter as a plain LoRA on the original base weights: PEFT-key CPU tensors and the
    matching LoraConfig as a JSON-ready dict (what loaders rebuild the adapter from)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(denoiser).items()}
    config = denoiser.peft_config[ADAPTER].to_dict()
    config["target_modules"] = sorted(config["target_modules"] or [])
    config["init_lora_weights"] = True  # loaders must not re-run PiSSA & co. on their base
    config["loftq_config"] = {}
    initial = getattr(denoiser, _INITIAL_ATTR, None)
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
                name = _KOHYA_PREFIX + module.replace(".", "_") if unet else f"transformer.{module}"
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
        doubled = getattr(denoiser, _INITIAL_ATTR, None) is not None
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

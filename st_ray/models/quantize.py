"""Quantised base models: ``base_model_precision`` and ``text_encoder_N_precision``.

A post-load step: the family module loads the denoiser (or its text encoders) as usual and
``quantize_denoiser`` / ``quantize_text_encoders`` replace the frozen weights of its layers by
quantised ones, once per worker (or caching actor). LoRA and LyCORIS adapters are then added on
top of the quantised layers; only the adapters train.

===================== ================ ======================================= ===================
value                 package          what replaces the layer's weight        runs on
===================== ================ ======================================= ===================
int8-quanto           optimum-quanto   int8, per-channel scales (Linear, Conv) CPU, CUDA
int4-quanto           optimum-quanto   int4, groups of 128 (Linear, Conv)      CPU, CUDA
int2-quanto           optimum-quanto   int2, groups of 128 (Linear, Conv)      CPU, CUDA
fp8-quanto            optimum-quanto   float8 e4m3fn (Linear, Conv)            CPU, CUDA
fp8uz-quanto          optimum-quanto   float8 e4m3fnuz (Linear, Conv)          CPU, CUDA
int8-torchao          torchao          Int8WeightOnlyConfig (Linear)           CPU, CUDA
int4-torchao          torchao          Int4WeightOnlyConfig (Linear)           CUDA only
fp8-torchao           torchao          Float8WeightOnlyConfig (Linear)         CPU, CUDA >= sm 8.9
nf4-bnb               bitsandbytes     Linear4bit NF4 (Linear)                 CPU, CUDA
===================== ================ ======================================= ===================

torchao 0.18 has no CPU layout for int4 weights (its int4 tensors need the CUDA tinygemm or
mslk kernels); its float8 weight-only path needs compute capability 8.9 (Ada, Hopper) on CUDA.
Those combinations are refused with the option, the value and what they need, at config
validation when the run is known to be CPU-only (``check_options``) and at load otherwise.

Layers kept unquantised (``KEEP``): the model-level input/output projections, embedders and
the final norm, which are small and precision-sensitive; every block's layers (attention,
feed-forward, AdaLN modulation, UNet convolutions for quanto) are quantised.

``quantize_via``: ``accelerator`` quantises on the training device, ``cpu`` loads and quantises
on the CPU and then moves the quantised model (lower peak GPU memory), ``pipeline`` lets
diffusers quantise while loading (``from_pretrained(quantization_config=...)``, built from the
precision and the ``quantization_config`` option's entry for the component, ``default`` else).
``base_model_default_dtype`` is the dtype of every weight that stays unquantised.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from st_ray.models.family import FamilySpec

NO_CHANGE = "no_change"
TEXT_ENCODER_OPTIONS = tuple(f"text_encoder_{i}_precision" for i in range(1, 5))

# Patterns (fnmatch on the full dotted module path) of layers that stay unquantised: the
# model's input/output projections and embedders, small and precision-sensitive.
KEEP = (
    "proj_in",
    "proj_out",
    "x_embedder",
    "context_embedder",
    "pos_embed*",
    "norm_out*",
    "time_*",
    "*time_embed*",
    "*timestep_embed*",
    "time_text_embed*",
    "add_embedding*",
    "conv_in",
    "conv_out",
    "caption_projection*",
    "adaln_single*",
    "text_projection",
)


@dataclass(frozen=True)
class Scheme:
    backend: str  # "quanto", "torchao" or "bnb"
    package: str  # the pip package that provides it
    qtype: str  # backend-specific weight type name
    cpu: bool = True  # runs on CPU tensors
    min_capability: tuple[int, int] | None = None  # CUDA compute capability needed


SCHEMES: dict[str, Scheme] = {
    "int8-quanto": Scheme("quanto", "optimum-quanto", "qint8"),
    "int4-quanto": Scheme("quanto", "optimum-quanto", "qint4"),
    "int2-quanto": Scheme("quanto", "optimum-quanto", "qint2"),
    "fp8-quanto": Scheme("quanto", "optimum-quanto", "qfloat8"),
    "fp8uz-quanto": Scheme("quanto", "optimum-quanto", "qfloat8_e4m3fnuz"),
    "int8-torchao": Scheme("torchao", "torchao", "Int8WeightOnlyConfig"),
    "int4-torchao": Scheme("torchao", "torchao", "Int4WeightOnlyConfig", cpu=False),
    "fp8-torchao": Scheme("torchao", "torchao", "Float8WeightOnlyConfig", min_capability=(8, 9)),
    "nf4-bnb": Scheme("bnb", "bitsandbytes", "nf4"),
}
_IMPORTS = {"quanto": "optimum.quanto", "torchao": "torchao.quantization", "bnb": "bitsandbytes"}
_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


class QuantizationUnavailable(ValueError):
    """A precision that cannot run here: missing package or unsuitable hardware."""


def scheme(option: str, value: str) -> Scheme:
    if value not in SCHEMES:
        raise ValueError(
            f"{option}: unknown precision {value!r}; accepted: {NO_CHANGE}, " + ", ".join(SCHEMES)
        )
    return SCHEMES[value]


def check_precision(option: str, value: str | None, device: torch.device | str | None) -> None:
    """Refuse ``value`` for ``option`` when its package is missing or ``device`` cannot run it.
    ``device`` None checks the package only (the device is not known yet)."""
    if not value or value == NO_CHANGE:
        return
    import importlib

    spec = scheme(option, value)
    try:
        importlib.import_module(_IMPORTS[spec.backend])
    except ImportError as err:
        raise QuantizationUnavailable(
            f"{option} {value!r} needs the Python package '{spec.package}', which cannot be "
            f"imported here ({err}); reinstall st_ray's dependencies or choose another precision"
        ) from err
    if device is None:
        return
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        if not spec.cpu:
            raise QuantizationUnavailable(
                f"{option} {value!r} needs a CUDA GPU: torchao {_version('torchao')} has no CPU "
                f"kernels for int4 weights; on CPU use int4-quanto or nf4-bnb instead"
            )
        return
    if spec.min_capability and torch.cuda.get_device_capability(device) < spec.min_capability:
        major, minor = spec.min_capability
        raise QuantizationUnavailable(
            f"{option} {value!r} needs a CUDA GPU of compute capability {major}.{minor} or newer "
            f"(Ada, Hopper) for float8 weights; {torch.cuda.get_device_name(device)} is not one: "
            "use fp8-quanto or int8-torchao instead"
        )


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def check_options(options: Mapping[str, Any], *, cpu_only: bool) -> list[tuple[str, str]]:
    """(option, problem) for every precision setting that cannot work: unknown packages,
    hardware needs when the run is known to be CPU-only, training quantised weights, the
    pipeline path's limits and a malformed quantization_config."""
    problems: list[tuple[str, str]] = []
    device = "cpu" if cpu_only else None
    for option in ("base_model_precision", *TEXT_ENCODER_OPTIONS):
        value = options.get(option)
        try:
            check_precision(option, value, device)
        except ValueError as err:
            problems.append((option, str(err)))
    base = options.get("base_model_precision") or NO_CHANGE
    if base != NO_CHANGE and options.get("model_type") == "full":
        problems.append(
            (
                "base_model_precision",
                f"{base!r} quantises the denoiser's weights, which then cannot be trained: "
                "use model_type 'lora' (adapters train on top of the quantised weights) or "
                "base_model_precision 'no_change'",
            )
        )
    via = options.get("quantize_via") or "accelerator"
    if via == "pipeline" and base == "nf4-bnb" and cpu_only:
        problems.append(
            (
                "quantize_via",
                "'pipeline' with base_model_precision 'nf4-bnb' needs a CUDA GPU (diffusers' "
                "bitsandbytes loader refuses to run without one); use quantize_via 'cpu' or "
                "'accelerator'",
            )
        )
    try:
        pipeline_overrides(options, "transformer")
    except ValueError as err:
        problems.append(("quantization_config", str(err)))
    return problems


# ---------------------------------------------------------------------------- which layers


def quantizable(model: torch.nn.Module, keep: Iterable[str] = KEEP) -> list[str]:
    """Full names of the Linear (and Conv2d) layers that get quantised."""
    import torch

    keep = tuple(keep)
    names = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        if any(fnmatch.fnmatch(name, p) for p in keep):
            continue
        names.append(name)
    return names


# ---------------------------------------------------------------------------- quantising


def quantize_model(
    model: torch.nn.Module,
    value: str,
    *,
    option: str,
    device: torch.device,
    compute_dtype: torch.dtype,
) -> list[str]:
    """Quantise ``model``'s eligible layers in place to ``value``; returns their names."""
    check_precision(option, value, device)
    spec = scheme(option, value)
    import torch

    linear_only = spec.backend != "quanto"
    names = [
        n
        for n in quantizable(model)
        if not linear_only or isinstance(model.get_submodule(n), torch.nn.Linear)
    ]
    if not names:
        return []
    if spec.backend == "quanto":
        import optimum.quanto as quanto

        with _quiet():
            quanto.quantize(model, weights=getattr(quanto, spec.qtype), include=names)
            quanto.freeze(model)
    elif spec.backend == "torchao":
        import torchao.quantization as ao

        wanted = set(names)
        config = getattr(ao, spec.qtype)()
        if spec.qtype == "Int4WeightOnlyConfig":
            config = ao.Int4WeightOnlyConfig(group_size=_int4_group(model, names))
        with _quiet():
            ao.quantize_(model, config, filter_fn=lambda _m, fqn: fqn in wanted)
    else:
        _bnb_nf4(model, names, device, compute_dtype)
    model.requires_grad_(False)
    return names


def _int4_group(model: torch.nn.Module, names: list[str]) -> int:
    """The largest of torchao's group sizes that divides every layer's input width."""
    widths = [model.get_submodule(n).in_features for n in names]
    for group in (128, 64, 32):
        if all(w % group == 0 for w in widths):
            return group
    return 32  # layers it does not divide are skipped by torchao


def _bnb_nf4(
    model: torch.nn.Module, names: list[str], device: torch.device, compute_dtype: torch.dtype
) -> None:
    """Replace each Linear by a bitsandbytes Linear4bit (NF4, quantised when moved to
    ``device``)."""
    import bitsandbytes as bnb
    import torch

    for name in names:
        old = model.get_submodule(name)
        new = bnb.nn.Linear4bit(
            old.in_features,
            old.out_features,
            bias=old.bias is not None,
            compute_dtype=compute_dtype,
            quant_type="nf4",
            device="meta",
        )
        new.weight = bnb.nn.Params4bit(
            old.weight.data.to("cpu"), requires_grad=False, quant_type="nf4"
        )
        if old.bias is not None:
            new.bias = torch.nn.Parameter(old.bias.data, requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new.to(device))


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def default_dtype(options: Mapping[str, Any]) -> torch.dtype:
    import torch

    return getattr(torch, _DTYPES[str(options.get("base_model_default_dtype") or "bf16")])


def quantizing(options: Mapping[str, Any]) -> bool:
    return (options.get("base_model_precision") or NO_CHANGE) != NO_CHANGE


def load_device(options: Mapping[str, Any], device: torch.device) -> torch.device:
    """Where the family should load the denoiser: the CPU for quantize_via 'cpu'."""
    import torch

    if quantizing(options) and options.get("quantize_via") == "cpu":
        return torch.device("cpu")
    return device


def quantize_denoiser(
    model: torch.nn.Module, options: Mapping[str, Any], device: torch.device
) -> torch.nn.Module:
    """The post-load step for the denoiser: unquantised weights in base_model_default_dtype,
    eligible layers in base_model_precision, the result on ``device``. A no-op for
    'no_change' or a model diffusers already quantised (quantize_via 'pipeline')."""
    if not quantizing(options) or getattr(model, "hf_quantizer", None) is not None:
        return model
    value = str(options["base_model_precision"])
    dtype = default_dtype(options)
    with _quiet_diffusers():  # its warning about casting with .to() concerns fp32 modules only
        model.to(dtype)
    at = next(model.parameters()).device
    quantize_model(model, value, option="base_model_precision", device=at, compute_dtype=dtype)
    return model.to(device)


def quantize_text_encoders(
    models: dict[str, Any], options: Mapping[str, Any], device: torch.device
) -> dict[str, list[str]]:
    """Quantise each text encoder whose text_encoder_N_precision is set (``text_encoder`` is
    N = 1, ``text_encoder_2`` is N = 2, ...), in place; {encoder: quantised layers}."""
    done: dict[str, list[str]] = {}
    for name, model in models.items():
        index = 1 if name == "text_encoder" else int(name.rsplit("_", 1)[-1])
        option = f"text_encoder_{index}_precision"
        value = options.get(option) or NO_CHANGE
        if value == NO_CHANGE:
            continue
        dtype = next(model.parameters()).dtype
        done[name] = quantize_model(
            model, str(value), option=option, device=device, compute_dtype=dtype
        )
    return done


# ---------------------------------------------------------------------------- quantize_via pipeline


def pipeline_overrides(options: Mapping[str, Any], component: str) -> dict[str, Any]:
    """quantization_config's entry for ``component`` (else 'default'), a dict of keyword
    arguments for the diffusers quantization config class the precision selects."""
    raw = options.get("quantization_config")
    if raw in (None, "", {}):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"quantization_config is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(
            "quantization_config must be a JSON object keyed by component ('unet', "
            "'transformer', 'text_encoder' or 'default')"
        )
    entry = raw.get(component, raw.get("default", {}))
    if not isinstance(entry, dict):
        raise ValueError(
            f"quantization_config[{component!r}] must be an object of quantization settings"
        )
    return dict(entry)


def diffusers_config(value: str, overrides: Mapping[str, Any], compute_dtype: torch.dtype) -> Any:
    """The diffusers quantization_config object for precision ``value``."""
    import inspect

    import diffusers

    spec = scheme("base_model_precision", value)
    if spec.backend == "quanto":
        weights = {"qint8": "int8", "qint4": "int4", "qint2": "int2", "qfloat8": "float8"}
        if spec.qtype not in weights:
            raise ValueError(
                f"base_model_precision {value!r} is not offered by diffusers' QuantoConfig "
                "(int8, int4, int2, float8); use quantize_via 'cpu' or 'accelerator'"
            )
        cls, kwargs = diffusers.QuantoConfig, {"weights_dtype": weights[spec.qtype]}
    elif spec.backend == "torchao":
        import torchao.quantization as ao

        cls, kwargs = diffusers.TorchAoConfig, {"quant_type": getattr(ao, spec.qtype)()}
    else:
        cls = diffusers.BitsAndBytesConfig
        kwargs = {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": compute_dtype,
        }
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ValueError(
            f"quantization_config: {', '.join(unknown)} not a setting of diffusers' "
            f"{cls.__name__}; it accepts: {', '.join(sorted(accepted))}"
        )
    return cls(**{**kwargs, **overrides})


def load_denoiser_via_pipeline(
    spec: FamilySpec,
    model_path: str,
    *,
    device: torch.device,
    options: Mapping[str, Any],
) -> torch.nn.Module:
    """quantize_via 'pipeline': the family's denoiser read by its diffusers class's
    from_pretrained with a quantization_config (the same source resolution as every family)."""
    from st_ray.models.family import load_pretrained_denoiser

    value = str(options["base_model_precision"])
    check_precision("base_model_precision", value, device)
    dtype = default_dtype(options)
    quant = diffusers_config(value, pipeline_overrides(options, spec.denoiser), dtype)
    model = load_pretrained_denoiser(
        spec.denoiser,
        spec.denoiser_class,
        model_path,
        dtype=dtype,
        # bitsandbytes models are placed by diffusers and refuse .to()
        device=None if value == "nf4-bnb" else device,
        options=options,
        quantization_config=quant,
    )
    return model.requires_grad_(False)


# ---------------------------------------------------------------------------- measuring


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the model's parameters and buffers occupy, counting the packed data and scales
    inside quantised tensor subclasses (quanto, torchao) and bitsandbytes' NF4 state."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        total += _tensor_bytes(tensor, seen)
        state = getattr(tensor, "quant_state", None)
        if state is not None:  # bitsandbytes: absmax (and its own nested quantisation)
            for part in (getattr(state, "absmax", None), getattr(state, "code", None)):
                if part is not None:
                    total += _tensor_bytes(part, seen)
    return total


def _tensor_bytes(tensor: torch.Tensor, seen: set[int]) -> int:
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor).__name__ not in ("Parameter", "Tensor"):
        try:
            names, _ = flatten()
        except Exception:  # noqa: BLE001 - fall back to the plain storage size
            names = []
        if names:
            return sum(_tensor_bytes(getattr(tensor, n), seen) for n in names)
    key = tensor.untyped_storage().data_ptr() if tensor.device.type != "meta" else id(tensor)
    if key in seen:
        return 0
    seen.add(key)
    return tensor.numel() * tensor.element_size()

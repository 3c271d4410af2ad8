"""The family protocol: what st_ray must know about a model family and how to drive it.

Static half: each family module declares one ``FamilySpec``. Runtime half: each family module
also implements ``FamilyModule``'s functions (text encoding for the caching stage, the denoiser
and its training forward pass for the loop); ``get_family_module`` returns the module itself.
The denoiser helpers every family shares (loading, the scheduler config, unwrapping) follow
the protocol; torch and diffusers are imported lazily, as the config code imports this file.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    import numpy as np
    import torch

    from st_ray.models.text_encoders import TextEncoders


@dataclass(frozen=True)
class FamilySpec:
    name: str
    # "unet" or "transformer": the subfolder of the diffusers pipeline that is trained.
    denoiser: str
    # Prediction types the family's checkpoints use; the first is the default.
    prediction_types: tuple[str, ...]
    # flavour -> Hub id of the default checkpoint for that flavour; the first is the default.
    flavours: dict[str, str]
    # Pixel granularity of one latent token (VAE downscale x patch size): bucket sides must be
    # multiples of it.
    pixel_granularity: int
    text_encoders: int
    pipeline_class: str

    @property
    def default_flavour(self) -> str:
        return next(iter(self.flavours))

    @property
    def flow_matching(self) -> bool:
        return self.prediction_types[0] == "flow_matching"


class FamilyModule(Protocol):
    """The functions every family module provides (a module satisfies this structurally)."""

    SPEC: FamilySpec

    def load_text_encoders(
        self,
        model_path: str,
        *,
        device: torch.device,
        dtype: torch.dtype,
        options: Mapping[str, Any],
    ) -> TextEncoders:
        """Tokenizers and frozen (eval, no-grad) text encoders from the diffusers pipeline
        folder or Hub id ``model_path``, honouring the revision, variant and
        pretrained_t5_model_name_or_path run options."""
        ...

    def encode_prompts(
        self, encoders: TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """Encode prompts once each into batch-first arrays: exactly the conditioning training
        needs, as the family's diffusers pipeline ``encode_prompt`` builds it."""
        ...

    def load_denoiser(
        self,
        model_path: str,
        *,
        dtype: torch.dtype,
        device: torch.device,
        options: Mapping[str, Any],
    ) -> torch.nn.Module:
        """The trained component (``SPEC.denoiser``: UNet or transformer) from ``model_path``
        or the pretrained_{unet,transformer}_model_name_or_path / _subfolder run options, with
        gradient checkpointing enabled when the gradient_checkpointing option says so. It comes
        back as from_pretrained leaves it (eval mode, every parameter trainable): the loop
        decides what trains."""
        ...

    def noise_scheduler_config(self, model_path: str, options: Mapping[str, Any]) -> dict:
        """The pipeline's scheduler/scheduler_config.json as a dict; the loop derives the
        DDPM alphas or the flow-matching settings from it."""
        ...

    def predict(
        self,
        denoiser: torch.nn.Module,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        batch: Mapping[str, torch.Tensor],
        options: Mapping[str, Any],
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The denoiser's prediction for ``noisy_latents`` (B, C, H, W) in the same shape and
        dtype, differentiable with respect to the denoiser's parameters.

        ``timesteps`` (B,) are on the scheduler's scale, as the pipelines pass them: DDPM
        indices in [0, num_train_timesteps) for the UNet families and PixArt, sigma * 1000 for
        the flow-matching families. ``batch`` holds ``encode_prompts``' keys as batch-first
        tensors, plus for SDXL ``original_size``, ``crop_top_left`` and ``target_size`` (each
        (B, 2) in pixels, (height, width) / (top, left) order). ``denoiser`` may be wrapped
        (DDP, torch.compile): it is called as given. ``generator`` (or ``batch["generator"]``)
        feeds the randomness some families draw per step (Flux random-range guidance).
        Conditioning is cast to the denoiser's dtype and moved to the latents' device.
        """
        ...


# ---------------------------------------------------------------------- denoiser helpers


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The diffusers model inside DDP (``.module``) or torch.compile (``._orig_mod``) wrappers,
    for reading its config and dtype; the forward call still goes through the wrapper."""
    while True:
        inner = getattr(model, "module", None)
        inner = getattr(model, "_orig_mod", None) if inner is None else inner
        if inner is None:
            return model
        model = inner


def load_pretrained_denoiser(
    kind: str,
    model_class: str,
    model_path: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    options: Mapping[str, Any],
) -> torch.nn.Module:
    """``diffusers.<model_class>.from_pretrained`` for denoiser ``kind`` ("unet" or
    "transformer"), honouring pretrained_<kind>_model_name_or_path and _subfolder ('none' =
    weights at the top level, as in SimpleTuner), revision, variant and gradient_checkpointing.
    """
    import diffusers

    source = options.get(f"pretrained_{kind}_model_name_or_path") or model_path
    subfolder = options.get(f"pretrained_{kind}_subfolder") or kind
    kwargs: dict[str, Any] = {"subfolder": None if subfolder.lower() == "none" else subfolder}
    # Like the T5 override in text_encoders, revision and variant describe the base model
    # repository, so a separate denoiser source is read at its default branch and file names.
    if source == model_path:
        kwargs.update({k: options[k] for k in ("revision", "variant") if options.get(k)})
    model = getattr(diffusers, model_class).from_pretrained(source, torch_dtype=dtype, **kwargs)
    if options.get("gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    return model.to(device)


def noise_scheduler_config(model_path: str, options: Mapping[str, Any]) -> dict:
    """scheduler/scheduler_config.json of the pipeline (read the same way for every family)."""
    # Any scheduler class reads the file: load_config does not check _class_name.
    from diffusers import DDPMScheduler

    kwargs = {"revision": options["revision"]} if options.get("revision") else {}
    return dict(DDPMScheduler.load_config(model_path, subfolder="scheduler", **kwargs))


def conditioning(
    batch: Mapping[str, torch.Tensor], key: str, like: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``batch[key]`` on ``like``'s device in ``dtype`` (the denoiser's compute dtype)."""
    return batch[key].to(device=like.device, dtype=dtype)


# The registry comes after the helpers: the family modules import them while it loads.
_MODULES = ("sd1x", "sd2x", "sdxl", "flux", "sd3", "pixart_sigma")


# Family name -> its module.
_FAMILY_MODULES: dict[str, ModuleType] = {}


def _load() -> dict[str, FamilySpec]:
    specs = {}
    for name in _MODULES:
        module = importlib.import_module(f"st_ray.models.{name}")
        specs[module.SPEC.name] = module.SPEC
        _FAMILY_MODULES[module.SPEC.name] = module
    return specs


FAMILIES: dict[str, FamilySpec] = _load()


def get_family(name: str) -> FamilySpec:
    if name not in FAMILIES:
        raise KeyError(
            f"model family '{name}' is not available in st_ray yet; available: "
            + ", ".join(FAMILIES)
        )
    return FAMILIES[name]


def get_family_module(name: str) -> FamilyModule:
    """The module implementing family ``name`` (same errors as ``get_family``)."""
    get_family(name)
    return cast("FamilyModule", _FAMILY_MODULES[name])

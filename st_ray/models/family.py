"""The family protocol: what st_ray must know about a model family and how to drive it.

A family is one module (``st_ray/models/<name>.py``, or a module of a package named in
``ST_RAY_FAMILY_PACKAGES``) plus its tiny zoo recipe; nothing else in the codebase names
families. The module declares:

- ``SPEC``, a ``FamilySpec``: every static fact the rest of st_ray reads (checkpoints, denoiser
  and VAE classes, pipeline, latent geometry, text encoders, the options the family owns and
  which caches they change, LoRA presets);
- ``encode_prompts`` and ``predict`` (required hooks of ``FamilyModule`` below);
- optionally any other hook of ``FamilyModule``: ``Family`` supplies the shared default of
  every hook a module leaves out.

Modules are discovered: every module of this package (and of the packages listed,
comma-separated, in the ``ST_RAY_FAMILY_PACKAGES`` environment variable) that defines ``SPEC``
is a family. torch and diffusers are imported lazily, as the config code imports this file.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from st_ray.config.schema import Option

# The denoiser helpers family modules import from here.
from st_ray.models.denoiser import (  # noqa: F401
    conditioning,
    load_pretrained_denoiser,
    noise_scheduler_config,
    unwrap,
)
from st_ray.models.kl_vae import kl_latents, kl_pixels
from st_ray.models.routing import TokenRouting
from st_ray.models.slider_targets import SLIDER_TARGETS

if TYPE_CHECKING:
    import numpy as np
    import torch

    from st_ray.models.text_encoders import Slot, TextEncoders

# Every attention projection of diffusers' Attention blocks: the LoRA preset of most families.
ATTENTION_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
# Block lists (``FamilySpec.hidden_blocks``) shared by families: diffusers' UNet2DConditionModel
# (down blocks return (hidden states, skip connections)), and a DiT whose blocks return the
# image tokens, or (text tokens, image tokens) as diffusers' joint blocks do.
UNET_BLOCKS = (("down_blocks", 0), ("mid_block", 0), ("up_blocks", 0))
DIT_BLOCKS = (("transformer_blocks", 0),)
JOINT_DIT_BLOCKS = (("transformer_blocks", 1),)
# Extra packages whose modules with a ``SPEC`` are families too (plugins), comma-separated.
PACKAGES_ENV = "ST_RAY_FAMILY_PACKAGES"
# Caches an option can make stale (``Option.caches``).
TEXT_CACHE, LATENT_CACHE = "text", "latent"


@dataclass(frozen=True)
class FamilySpec:
    name: str
    # "unet" or "transformer": the subfolder of the diffusers pipeline that is trained.
    denoiser: str
    # The diffusers class of that component (e.g. "UNet2DConditionModel").
    denoiser_class: str
    # Prediction types the family's checkpoints use; the first is the default.
    prediction_types: tuple[str, ...]
    # flavour -> Hub id of the default checkpoint for that flavour; the first is the default.
    flavours: dict[str, str]
    # Pixel granularity of one latent token (VAE downscale x patch size): bucket sides must be
    # multiples of it.
    pixel_granularity: int
    text_encoders: int
    pipeline_class: str
    # Pixels per cached latent cell along each side (the VAE's spatial downscale; 1 for
    # pixel-space families) and channels of a cached latent: a cached (C, h, w) latent of a
    # (H, W) bucket has C == latent_channels and h * latent_downscale == H.
    latent_downscale: int = 8
    latent_channels: int = 4
    # The diffusers class of the pipeline's ``vae/``; None for pixel-space families.
    vae_class: str | None = "AutoencoderKL"
    # The diffusers ControlNet class trained beside the denoiser with controlnet: true (None:
    # ControlNet training is refused for the family).
    controlnet_class: str | None = None
    # The text encoders ``load_text_encoders`` loads by default (st_ray.models.text_encoders).
    text_slots: tuple[Slot, ...] = ()
    # Module names PEFT adapts by default (see st_ray.train.adapters).
    lora_targets: tuple[str, ...] = ATTENTION_TARGETS
    # Named LoRA presets chosen by the owned option ``lora_preset_option`` (its default names
    # the preset used when unset); empty: ``lora_targets`` is the only preset.
    lora_presets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    lora_preset_option: str | None = None
    # What slider_lora_target adapts instead of the preset (standard PEFT LoRA only).
    slider_lora_targets: tuple[str, ...] = SLIDER_TARGETS
    # Flavours the family defines upstream that st_ray refuses at validation: flavour -> why.
    refused_flavours: Mapping[str, str] = field(default_factory=dict)
    # Options only this family reads (declared here, collected into the option catalog; set
    # for another family they are refused). ``Option.caches`` says which caches they change.
    options: tuple[Option, ...] = ()
    # The denoiser's blocks in forward order, for regularisers that read hidden states
    # (LayerSync): (attribute path, index of the image hidden states when a block returns a
    # tuple). A path naming a ModuleList contributes each of its blocks; empty: not exposed.
    hidden_blocks: tuple[tuple[str, int], ...] = ()
    # TREAD routing (st_ray.train.tread); None: not routable, ``token_routing_refused`` says why.
    token_routing: TokenRouting | None = None
    token_routing_refused: str = ""
    # The module whose ``build(out_dir, seed)`` writes the tiny test model; default
    # ``st_ray.zoo.<name>``.
    zoo_recipe: str = ""
    # Video families: the VAE's temporal compression (clips of frame_step * k + 1 frames,
    # cached as (C, k + 1, h, w) latents); 0 for image families, which refuse video datasets.
    frame_step: int = 0
    # Flavours that train image-to-video (first-frame conditioning: a video block's is_i2v).
    i2v_flavours: tuple[str, ...] = ()

    @property
    def default_flavour(self) -> str:
        return next(iter(self.flavours))

    @property
    def flow_matching(self) -> bool:
        return self.prediction_types[0] == "flow_matching"

    @property
    def zoo_module(self) -> str:
        return self.zoo_recipe or f"st_ray.zoo.{self.name}"

    @property
    def video(self) -> bool:
        return self.frame_step > 0

    def cache_options(self, cache: str) -> tuple[str, ...]:
        """Names of the owned options whose value changes ``cache`` ("text" or "latent")."""
        return tuple(o.name for o in self.options if cache in o.caches)

    def option(self, name: str) -> Option:
        """The owned option ``name``."""
        return next(o for o in self.options if o.name == name)


@dataclass(frozen=True)
class Prediction:
    """What ``predict`` returns: the denoiser's output in the noisy latents' shape and dtype,
    and a scalar the loop adds to the step's loss (e.g. a mixture-of-experts load-balancing
    loss), None when the family adds nothing."""

    output: torch.Tensor
    aux_loss: torch.Tensor | None = None


class FamilyModule(Protocol):
    """The hooks of a family; ``Family`` supplies the default of every optional one."""

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
        pretrained_t5_model_name_or_path run options. Default: ``text_encoders.load`` of
        ``SPEC.text_slots``."""
        ...

    def encode_prompts(
        self, encoders: TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """Required. Encode prompts once each into batch-first arrays: exactly the
        conditioning training needs, as the family's diffusers pipeline ``encode_prompt``
        builds it."""
        ...

    def load_denoiser(
        self,
        model_path: str,
        *,
        dtype: torch.dtype,
        device: torch.device,
        options: Mapping[str, Any],
    ) -> torch.nn.Module:
        """The trained component (``SPEC.denoiser``) from ``model_path`` or the
        pretrained_{unet,transformer}_model_name_or_path / _subfolder run options, with
        gradient checkpointing enabled when the gradient_checkpointing option says so. It comes
        back as from_pretrained leaves it (eval mode, every parameter trainable): the loop
        decides what trains. Default: ``load_pretrained_denoiser`` of ``SPEC.denoiser_class``."""
        ...

    def noise_scheduler_config(self, model_path: str, options: Mapping[str, Any]) -> dict:
        """The pipeline's scheduler/scheduler_config.json as a dict; the loop derives the
        DDPM alphas or the flow-matching settings from it."""
        ...

    def encode_latents(
        self,
        vae: Any,
        pixels: torch.Tensor,
        noise_like: Callable[[tuple[int, ...]], torch.Tensor],
    ) -> torch.Tensor:
        """Training latents (B, C, h, w) for ``pixels`` (B, 3, H, W) in [-1, 1], as the
        family's training script makes them (scaled, shifted or normalised). ``noise_like``
        gives (B, *shape) standard-normal noise fixed per image, so a posterior sample is
        reproducible. ``vae`` is ``SPEC.vae_class`` loaded from ``vae/`` (None for pixel-space
        families). Default: ``kl_latents``; for pixel-space families the pixels themselves."""
        ...

    def decode_latents(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [-1, 1] of training latents (B, C, h, w): the inverse of
        ``encode_latents`` followed by the VAE's decoder, as the pipeline decodes (regularisers
        that compare with a visual encoder, CREPA). Default: ``kl_pixels``; for pixel-space
        families the latents themselves."""
        ...

    def lora_targets(self, options: Mapping[str, Any]) -> list[str]:
        """The LoRA preset for these options; default ``SPEC.lora_presets`` chosen by the
        ``SPEC.lora_preset_option`` option, else ``SPEC.lora_targets``. A
        ``peft_lora_target_modules`` option is applied before this."""
        ...

    def validation_kwargs(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Extra arguments for the pipeline call that renders validation images (e.g. the T5
        length the prompts were trained with); default none. Only those the pipeline's
        ``__call__`` accepts are passed."""
        ...

    def prepare_render(self, pipeline: Any, width: int, height: int) -> None:
        """Adjust the validation pipeline before it renders a ``width`` x ``height`` image, for
        pipelines that would not honour the requested size (e.g. HiDream's fixed area);
        default nothing."""
        ...

    def validation_components(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Pipeline components validation passes to ``from_pretrained`` on top of the
        denoiser and text encoders (e.g. Cosmos' pass-through safety checker, as its pipeline
        will not run without one); default none."""
        ...

    def option_problems(self, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(option, message) for each option value this family cannot honour here (e.g. a
        feature needing a package that is not installed), reported when the config is
        validated, before any work; default none."""
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
    ) -> Prediction:
        """Required. The denoiser's prediction for ``noisy_latents`` (B, C, H, W) in the same
        shape and dtype, differentiable with respect to the denoiser's parameters, with the
        family's own loss term from this forward pass when it has one.

        ``timesteps`` (B,) are on the scheduler's scale, as the pipelines pass them: DDPM
        indices in [0, num_train_timesteps) for the DDPM families, sigma * 1000 for the
        flow-matching families. ``batch`` holds ``encode_prompts``' keys as batch-first
        tensors, plus for SDXL ``original_size``, ``crop_top_left`` and ``target_size`` (each
        (B, 2) in pixels, (height, width) / (top, left) order). ``denoiser`` may be wrapped
        (DDP, torch.compile): it is called as given. ``generator`` (or ``batch["generator"]``)
        feeds the randomness some families draw per step (Flux random-range guidance).
        Conditioning is cast to the denoiser's dtype and moved to the latents' device.
        """
        ...


class Family:
    """A family module with the protocol's defaults filled in: the one object the rest of
    st_ray drives a family through (nothing reads the module around it)."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.spec: FamilySpec = module.SPEC

    @property
    def name(self) -> str:
        return self.spec.name

    def _own(self, hook: str) -> Callable[..., Any] | None:
        return getattr(self.module, hook, None)

    def load_text_encoders(
        self, model_path: str, *, device: torch.device, dtype: torch.dtype, options: Mapping
    ) -> TextEncoders:
        if own := self._own("load_text_encoders"):
            return own(model_path, device=device, dtype=dtype, options=options)
        from st_ray.models import text_encoders as te

        slots = self.spec.text_slots
        return te.load(model_path, slots, device=device, dtype=dtype, options=options)

    def encode_prompts(
        self, encoders: TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        return self.module.encode_prompts(encoders, prompts, options=options)

    def load_denoiser(
        self, model_path: str, *, dtype: torch.dtype, device: torch.device, options: Mapping
    ) -> torch.nn.Module:
        if own := self._own("load_denoiser"):
            return own(model_path, dtype=dtype, device=device, options=options)
        spec = self.spec
        return load_pretrained_denoiser(
            spec.denoiser,
            spec.denoiser_class,
            model_path,
            dtype=dtype,
            device=device,
            options=options,
        )

    def noise_scheduler_config(self, model_path: str, options: Mapping[str, Any]) -> dict:
        if own := self._own("noise_scheduler_config"):
            return own(model_path, options)
        return noise_scheduler_config(model_path, options)

    def encode_latents(
        self, vae: Any, pixels: torch.Tensor, noise_like: Callable[[tuple[int, ...]], Any]
    ) -> torch.Tensor:
        if own := self._own("encode_latents"):
            return own(vae, pixels, noise_like)
        return pixels if self.spec.vae_class is None else kl_latents(vae, pixels, noise_like)

    def decode_latents(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        if own := self._own("decode_latents"):
            return own(vae, latents)
        return latents if self.spec.vae_class is None else kl_pixels(vae, latents)

    def lora_targets(self, options: Mapping[str, Any]) -> list[str]:
        if own := self._own("lora_targets"):
            return list(own(options))
        spec = self.spec
        if spec.lora_preset_option is None:
            return list(spec.lora_targets)
        preset = self.lora_preset(options)
        if preset not in spec.lora_presets:
            raise ValueError(
                f"{spec.lora_preset_option} {preset!r} is not supported by st_ray; accepted: "
                + ", ".join(spec.lora_presets)
            )
        return list(spec.lora_presets[preset])

    def lora_preset(self, options: Mapping[str, Any]) -> str | None:
        """The name of the LoRA preset these options choose (None: the family has one)."""
        name = self.spec.lora_preset_option
        if name is None:
            return None
        return options.get(name) or self.spec.option(name).default

    def validation_kwargs(self, options: Mapping[str, Any]) -> dict[str, Any]:
        own = self._own("validation_kwargs")
        return dict(own(options)) if own else {}

    def prepare_render(self, pipeline: Any, width: int, height: int) -> None:
        if own := self._own("prepare_render"):
            own(pipeline, width, height)

    def validation_components(self, options: Mapping[str, Any]) -> dict[str, Any]:
        own = self._own("validation_components")
        return dict(own(options)) if own else {}

    def option_problems(self, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        own = self._own("option_problems")
        return list(own(options)) if own else []

    def predict(
        self,
        denoiser: torch.nn.Module,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        batch: Mapping[str, torch.Tensor],
        options: Mapping[str, Any],
        *,
        generator: torch.Generator | None = None,
    ) -> Prediction:
        result = self.module.predict(
            denoiser, noisy_latents, timesteps, batch, options, generator=generator
        )
        if not isinstance(result, Prediction):
            raise TypeError(
                f"{self.module.__name__}.predict returned {type(result).__name__}; a family's "
                "predict returns st_ray.models.family.Prediction(output, aux_loss=None)"
            )
        return result


# ---------------------------------------------------------------------------------- registry

# Family name -> the family (module + defaults).
_FAMILY_MODULES: dict[str, Family] = {}
# SimpleTuner families st_ray does not implement yet: accepted as model_family values and
# refused at validation with the reason.
UNAVAILABLE_FAMILIES: dict[str, str] = {
    "ltxvideo": "LTX-Video is not supported yet",
}


def family_packages() -> list[str]:
    """This package, then the plugin packages named in ``ST_RAY_FAMILY_PACKAGES``."""
    extra = [p.strip() for p in os.environ.get(PACKAGES_ENV, "").split(",") if p.strip()]
    return [__package__ or "st_ray.models", *extra]


def _discover() -> dict[str, FamilySpec]:
    """Every module of the family packages with a ``SPEC`` is a family (imported after the
    helpers above exist, since family modules import them)."""
    specs: dict[str, FamilySpec] = {}
    for package_name in family_packages():
        try:
            package = importlib.import_module(package_name)
        except ImportError as err:
            raise ImportError(
                f"{PACKAGES_ENV} names package {package_name!r}, which cannot be imported: {err}"
            ) from err
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if info.name == "family" or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            spec = getattr(module, "SPEC", None)
            if not isinstance(spec, FamilySpec):
                continue
            if spec.name in specs or spec.name in UNAVAILABLE_FAMILIES:
                raise RuntimeError(
                    f"model family {spec.name!r} of {module.__name__} is declared twice"
                )
            specs[spec.name] = spec
            _FAMILY_MODULES[spec.name] = Family(module)
    return specs


FAMILIES: dict[str, FamilySpec] = _discover()


def get_family(name: str) -> FamilySpec:
    if name not in FAMILIES:
        raise KeyError(
            f"model family '{name}' is not available in st_ray yet; available: "
            + ", ".join(FAMILIES)
        )
    return FAMILIES[name]


def get_family_module(name: str) -> Family:
    """Family ``name`` with its hooks (same errors as ``get_family``)."""
    get_family(name)
    return _FAMILY_MODULES[name]

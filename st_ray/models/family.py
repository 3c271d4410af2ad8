"""The family protocol: what st_ray must know about a model family and how to drive it.

Static half: each family module declares one ``FamilySpec``. Runtime half: each family module
also implements ``FamilyModule``'s functions (text encoding for the caching stage so far);
``get_family_module`` returns the module itself.
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

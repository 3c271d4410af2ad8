"""The family protocol's static half: what st_ray must know about a family before loading it.

Each family module declares one ``FamilySpec``; training code for a family builds on it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


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


_MODULES = ("sd1x", "sd2x", "sdxl", "flux", "sd3", "pixart_sigma")


def _load() -> dict[str, FamilySpec]:
    specs = {}
    for name in _MODULES:
        spec = importlib.import_module(f"st_ray.models.{name}").SPEC
        specs[spec.name] = spec
    return specs


FAMILIES: dict[str, FamilySpec] = _load()


def get_family(name: str) -> FamilySpec:
    if name not in FAMILIES:
        raise KeyError(
            f"model family '{name}' is not available in st_ray yet; available: "
            + ", ".join(FAMILIES)
        )
    return FAMILIES[name]

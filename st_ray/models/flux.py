"""Flux.1: flow-matching MMDiT transformer, CLIP + T5 text encoders, packed 2x2 latents."""

from st_ray.models.family import FamilySpec

SPEC = FamilySpec(
    name="flux",
    denoiser="transformer",
    prediction_types=("flow_matching",),
    flavours={
        "dev": "black-forest-labs/FLUX.1-dev",
        "schnell": "black-forest-labs/FLUX.1-schnell",
        "krea": "black-forest-labs/FLUX.1-Krea-dev",
    },
    pixel_granularity=16,
    text_encoders=2,
    pipeline_class="FluxPipeline",
)

"""Stable Diffusion 3.x: flow-matching MMDiT, two CLIP encoders plus T5."""

from st_ray.models.family import FamilySpec

SPEC = FamilySpec(
    name="sd3",
    denoiser="transformer",
    prediction_types=("flow_matching",),
    flavours={
        "medium": "stabilityai/stable-diffusion-3.5-medium",
        "large": "stabilityai/stable-diffusion-3.5-large",
    },
    pixel_granularity=16,
    text_encoders=3,
    pipeline_class="StableDiffusion3Pipeline",
)

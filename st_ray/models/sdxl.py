"""SDXL: UNet with two CLIP text encoders, pooled embeddings and size/crop time ids."""

from st_ray.models.family import FamilySpec

SPEC = FamilySpec(
    name="sdxl",
    denoiser="unet",
    prediction_types=("epsilon", "v_prediction"),
    flavours={
        "base-1.0": "stabilityai/stable-diffusion-xl-base-1.0",
        "refiner-1.0": "stabilityai/stable-diffusion-xl-refiner-1.0",
    },
    pixel_granularity=8,
    text_encoders=2,
    pipeline_class="StableDiffusionXLPipeline",
)

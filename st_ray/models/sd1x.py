"""Stable Diffusion 1.x: UNet, one CLIP text encoder, epsilon prediction."""

from st_ray.models.family import FamilySpec

SPEC = FamilySpec(
    name="sd1x",
    denoiser="unet",
    prediction_types=("epsilon", "v_prediction"),
    flavours={"1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
    pixel_granularity=8,
    text_encoders=1,
    pipeline_class="StableDiffusionPipeline",
)

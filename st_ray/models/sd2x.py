"""Stable Diffusion 2.x: UNet, OpenCLIP text encoder, v-prediction (768) or epsilon (base)."""

from st_ray.models.family import UNET_BLOCKS, FamilySpec

# Same single-CLIP conditioning and UNet call as SD 1.x (OpenCLIP ViT-H instead of CLIP ViT-L,
# same layout).
from st_ray.models.sd1x import SLOTS as SLOTS
from st_ray.models.sd1x import encode_prompts as encode_prompts
from st_ray.models.sd1x import predict as predict

SPEC = FamilySpec(
    name="sd2x",
    denoiser="unet",
    denoiser_class="UNet2DConditionModel",
    controlnet_class="ControlNetModel",
    hidden_blocks=UNET_BLOCKS,
    prediction_types=("v_prediction", "epsilon"),
    flavours={
        "2.1": "stabilityai/stable-diffusion-2-1",
        "2.1-base": "stabilityai/stable-diffusion-2-1-base",
    },
    pixel_granularity=8,
    text_encoders=1,
    pipeline_class="StableDiffusionPipeline",
    text_slots=SLOTS,
)

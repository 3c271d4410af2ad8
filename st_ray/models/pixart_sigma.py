"""PixArt-Sigma: DiT transformer conditioned on T5, epsilon prediction."""

from st_ray.models.family import FamilySpec

SPEC = FamilySpec(
    name="pixart_sigma",
    denoiser="transformer",
    prediction_types=("epsilon",),
    flavours={
        "600M-1024": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
        "600M-512": "PixArt-alpha/PixArt-Sigma-XL-2-512-MS",
        "900M-1024-v0.6": "terminusresearch/pixart-900m-1024-ft-v0.6",
    },
    pixel_granularity=16,
    text_encoders=1,
    pipeline_class="PixArtSigmaPipeline",
)

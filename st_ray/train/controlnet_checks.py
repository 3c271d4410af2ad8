"""Plan-time checks of ControlNet training (``controlnet: true``) and controlnet conditioning:
refused with the reason before any work starts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from st_ray.config.errors import ProblemList
from st_ray.data.conditioning_links import conditioning_kind, conditioning_of


def check_controlnet(
    values: dict[str, Any], family: Any, datasets: Sequence[Any], problems: ProblemList
) -> list[str]:
    """Problems added to ``problems``; returns notes for the plan."""
    on = bool(values.get("controlnet"))
    images = [d for d in datasets if d.holds_images]  # eval datasets render too
    notes: list[str] = []
    if on and family is not None and family.controlnet_class is None:
        problems.add(
            "configuration",
            "controlnet",
            f"model_family '{family.name}' has no ControlNet in st_ray; ControlNet training "
            "works for the UNet families",
        )
    if on and values.get("lora_type") == "lycoris" and values.get("model_type") == "lora":
        problems.add(
            "configuration",
            "lora_type",
            "a ControlNet trains in full or as a PEFT LoRA ('standard'), not as LyCORIS",
        )
    if on and values.get("model_type") == "lora" and values.get("lora_format") == "comfyui":
        problems.add(
            "configuration",
            "lora_format",
            "a ControlNet LoRA is saved as PEFT tensors and merged into controlnet/; 'comfyui' "
            "keys are for denoiser LoRAs",
        )
    for image in images:
        linked = conditioning_of(datasets, image)
        kinds = {conditioning_kind(e) for e in linked}
        where = f"{image.id} (dataset)"
        if on and kinds != {"controlnet"}:
            problems.add(
                where,
                "conditioning_data",
                "ControlNet training needs a control image for every sample: pair this dataset "
                'with a "dataset_type": "conditioning" dataset of conditioning_type '
                f"'controlnet' (found: {', '.join(sorted(kinds)) or 'none'})",
            )
        if not on and "controlnet" in kinds:
            problems.add(
                where,
                "conditioning_data",
                f"pairs controlnet conditioning ({', '.join(e.id for e in linked)}), which only "
                "ControlNet training reads: set controlnet: true, or give the conditioning "
                "dataset conditioning_type 'mask'/'segmentation'",
            )
        if (
            on
            and len(linked) > 1
            and values.get("conditioning_multidataset_sampling") == "combined"
        ):
            problems.add(
                where,
                "conditioning_multidataset_sampling",
                "'combined' hands a ControlNet several control images per sample; it takes one "
                "(use 'random')",
            )
    if on and not values.get("validation_disable"):
        notes.append(
            "ControlNet training renders no validation images yet (rendering with control "
            "images is not implemented); the trained controlnet/ loads in the ControlNet pipeline"
        )
    return notes

"""ControlNet training (``controlnet: true``) for the UNet families: the denoiser is frozen and
a diffusers ``ControlNetModel`` beside it trains, full or as a LoRA, as in SimpleTuner.

``ControlledDenoiser`` is what the loop trains as its core: called like the UNet (the family's
``predict`` passes ``controlnet_cond`` through), it runs the ControlNet on the control image
(the batch's conditioning pixels, [0, 1] as the ControlNet pipelines feed it) and adds its
residuals to the frozen UNet's blocks, as ``StableDiffusionControlNetPipeline`` does.

The ControlNet starts from the UNet (``ControlNetModel.from_unet``; ``controlnet_custom_config``
may set that call's architecture arguments) or from ``controlnet_model_name_or_path``. Saved
in diffusers layout under ``controlnet/``, which ``ControlNetModel.from_pretrained`` and the
ControlNet pipelines load; a LoRA is saved as its adapter tensors too
(``controlnet_lora.safetensors``) and merged into that folder.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from st_ray.train import adapters
from st_ray.train.trainable import State, Trainable

SUBFOLDER = "controlnet"
LORA_FILE = "controlnet_lora.safetensors"
# ControlNetModel.from_unet's architecture arguments (what controlnet_custom_config may set).
FROM_UNET_KEYS = (
    "conditioning_embedding_out_channels",
    "conditioning_channels",
    "controlnet_conditioning_channel_order",
)


def enabled(options: Mapping[str, Any]) -> bool:
    return bool(options.get("controlnet"))


class ControlledDenoiser(torch.nn.Module):
    """A frozen UNet steered by a trainable ControlNet; called like the UNet."""

    def __init__(self, unet: torch.nn.Module, controlnet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def __getattr__(self, name: str) -> Any:
        # The family reads the UNet's config and embeddings (the added-conditioning check).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["unet"], name)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = False,
        controlnet_cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor]:
        if controlnet_cond is None:
            raise ValueError(
                "ControlNet training needs a control image per sample: pair the image dataset "
                'with a "dataset_type": "conditioning" dataset (conditioning_data)'
            )
        down, mid = self.controlnet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=controlnet_cond.to(sample.dtype),
            added_cond_kwargs=added_cond_kwargs,
            return_dict=False,
        )
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs=added_cond_kwargs,
            down_block_additional_residuals=[d.to(sample.dtype) for d in down],
            mid_block_additional_residual=mid.to(sample.dtype),
            return_dict=False,
        )


def control_image(batch: Mapping[str, Any]) -> torch.Tensor:
    """The batch's control images (B, 3, H, W) in [0, 1], from conditioning_pixels
    (B, 1, 3, H, W) in [-1, 1]."""
    pixels = batch["conditioning_pixels"]
    if pixels.shape[1] != 1:
        raise ValueError(
            "a ControlNet takes one control image per sample; with several conditioning "
            "datasets use conditioning_multidataset_sampling 'random'"
        )
    return (pixels[:, 0] + 1) / 2


def custom_arguments(options: Mapping[str, Any]) -> dict[str, Any]:
    """controlnet_custom_config as ControlNetModel.from_unet arguments; other keys refused."""
    raw = options.get("controlnet_custom_config")
    if raw in (None, "", {}):
        return {}
    config = json.loads(raw) if isinstance(raw, str) else dict(raw)
    unknown = sorted(set(config) - set(FROM_UNET_KEYS))
    if unknown:
        raise ValueError(
            f"controlnet_custom_config: {', '.join(unknown)} cannot be set for a ControlNet made "
            f"from the UNet; accepted: {', '.join(FROM_UNET_KEYS)}"
        )
    if "conditioning_embedding_out_channels" in config:
        config["conditioning_embedding_out_channels"] = tuple(
            config["conditioning_embedding_out_channels"]
        )
    return config


def attach(unet: torch.nn.Module, options: Mapping[str, Any]) -> ControlledDenoiser:
    """The UNet (frozen) with a ControlNet from controlnet_model_name_or_path or the UNet."""
    from diffusers import ControlNetModel

    path = options.get("controlnet_model_name_or_path")
    if path:
        controlnet = ControlNetModel.from_pretrained(str(path), torch_dtype=unet.dtype)
    else:
        controlnet = ControlNetModel.from_unet(unet, **custom_arguments(options))
    controlnet.to(device=unet.device)
    if controlnet.dtype != unet.dtype:
        controlnet.to(dtype=unet.dtype)
    if options.get("gradient_checkpointing"):
        controlnet.enable_gradient_checkpointing()
    unet.requires_grad_(False)
    return ControlledDenoiser(unet, controlnet)


class ControlNetTrainable(Trainable):
    """The ControlNet trains (whole, or a PEFT LoRA on it); the UNet stays frozen."""

    def __init__(self, family: str, options: Mapping[str, Any]) -> None:
        self.family = family
        self.options = options
        self.model_type = "lora" if options.get("model_type") == "lora" else "full"

    def attach(self, core: torch.nn.Module) -> None:
        core.unet.requires_grad_(False)
        if self.model_type == "full":
            core.controlnet.requires_grad_(True)
        else:
            core.controlnet.requires_grad_(False)
            adapters.add_lora(core.controlnet, self.family, lora_options(core, self.options))

    def save(self, core: torch.nn.Module, directory: Path) -> list[str]:
        if self.model_type == "full":
            core.controlnet.save_pretrained(directory / SUBFOLDER, safe_serialization=True)
            return [SUBFOLDER]
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state(core).items()}
        save_file(state, str(directory / LORA_FILE))
        merged = copy.deepcopy(core.controlnet).cpu()
        _merge_lora(merged)
        merged.save_pretrained(directory / SUBFOLDER, safe_serialization=True)
        return [LORA_FILE, SUBFOLDER]

    def state(self, core: torch.nn.Module) -> State:
        if self.model_type == "full":
            return None
        return {
            k: v.detach().cpu().clone()
            for k, v in adapters.lora_state_dict(core.controlnet).items()
        }

    def load(self, core: torch.nn.Module, directory: Path, state: State) -> None:
        if self.model_type == "lora":
            adapters.load_lora_state_dict(core.controlnet, state or {})
            return
        from diffusers import ControlNetModel

        loaded = ControlNetModel.from_pretrained(directory / SUBFOLDER)
        core.controlnet.load_state_dict(loaded.state_dict())


def lora_options(core: ControlledDenoiser, options: Mapping[str, Any]) -> dict[str, Any]:
    """The LoRA's targets on the ControlNet: the family's, plus the zero-initialised output
    convolutions and the control-image embedding (a LoRA on the attention layers alone gets
    no gradient through zero output convolutions), unless peft_lora_target_modules says."""
    if options.get("peft_lora_target_modules") not in (None, "", []):
        return dict(options)
    from st_ray.train.lora_targets import lora_target_modules

    control_convs = [
        name
        for name, module in core.controlnet.named_modules()
        if isinstance(module, torch.nn.Conv2d)
        and name.startswith(("controlnet_down_blocks.", "controlnet_mid_block", "controlnet_cond"))
    ]
    family_targets = lora_target_modules(str(options["model_family"]), options)
    return {**options, "peft_lora_target_modules": [*family_targets, *control_convs]}


def _merge_lora(model: torch.nn.Module) -> None:
    """Fold the PEFT LoRA layers of ``model`` into their base weights and drop them."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(model, attribute):
            delattr(model, attribute)

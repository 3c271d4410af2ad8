"""What a run trains, chosen once: a PEFT LoRA, a LyCORIS network or the whole denoiser.

A ``Trainable`` attaches itself to the freshly loaded denoiser, writes the trained weights in
the layout people load (checkpoints and the final export), gives the tensors a checkpoint
keeps to resume exactly, and loads them back. The loop, checkpoints and export call it and
never ask which kind it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from st_ray.plan import Plan
from st_ray.train import adapters, lora_export, lycoris_adapter

State = dict[str, torch.Tensor] | None


class Trainable:
    """The interface (and the full fine-tune's own behaviour where it has one)."""

    model_type = "full"

    def attach(self, core: torch.nn.Module) -> None:
        """Make ``core``'s trained parameters (and only those) require gradients."""
        raise NotImplementedError

    def save(self, core: torch.nn.Module, directory: Path) -> list[str]:
        """The trained weights in diffusers layout; returns the paths written (relative)."""
        raise NotImplementedError

    def state(self, core: torch.nn.Module) -> State:
        """What a checkpoint keeps to resume (detached CPU tensors), beyond ``save``'s files."""
        return None

    def load(self, core: torch.nn.Module, directory: Path, state: State) -> None:
        """Put a checkpoint's weights (``directory``, ``state``) back into ``core``."""
        raise NotImplementedError


class FullTrainable(Trainable):
    """Every denoiser weight trains; checkpoints hold the denoiser folder (unet/ or
    transformer/), which is also what resumes."""

    def __init__(self, subfolder: str) -> None:
        self.subfolder = subfolder

    def attach(self, core: torch.nn.Module) -> None:
        core.requires_grad_(True)

    def save(self, core: torch.nn.Module, directory: Path) -> list[str]:
        core.save_pretrained(directory / self.subfolder, safe_serialization=True)
        return [self.subfolder]

    def load(self, core: torch.nn.Module, directory: Path, state: State) -> None:
        loaded = type(core).from_pretrained(directory / self.subfolder)
        core.load_state_dict(loaded.state_dict())


class LoraTrainable(Trainable):
    """A PEFT LoRA (st_ray.train.adapters): saved as diffusers or ComfyUI LoRA weights,
    resumed from its PEFT-keyed tensors."""

    model_type = "lora"

    def __init__(self, family: str, options: Mapping[str, Any]) -> None:
        self.family = family
        self.options = options
        self.lora_format = str(options.get("lora_format") or "diffusers")

    def attach(self, core: torch.nn.Module) -> None:
        core.requires_grad_(False)
        adapters.add_lora(core, self.family, self.options)

    def save(self, core: torch.nn.Module, directory: Path) -> list[str]:
        lora_export.save_lora(
            core,
            self.family,
            directory,
            lora_format=self.lora_format,
            metadata=modelspec(self.options),
        )
        return [adapters.WEIGHT_NAME]

    def state(self, core: torch.nn.Module) -> State:
        return {k: v.detach().cpu().clone() for k, v in adapters.lora_state_dict(core).items()}

    def load(self, core: torch.nn.Module, directory: Path, state: State) -> None:
        adapters.load_lora_state_dict(core, state or {})


class LycorisTrainable(Trainable):
    """A LyCORIS network (st_ray.train.lycoris_adapter) from lycoris_config."""

    model_type = "lora"

    def __init__(self, options: Mapping[str, Any], config_dir: Path | None) -> None:
        self.options = options
        self.config_dir = config_dir  # a relative lycoris_config may sit beside the config

    def attach(self, core: torch.nn.Module) -> None:
        core.requires_grad_(False)
        lycoris_adapter.add_lycoris(core, self.options, self.config_dir)

    def save(self, core: torch.nn.Module, directory: Path) -> list[str]:
        return lycoris_adapter.save(core, directory, modelspec(self.options))

    def state(self, core: torch.nn.Module) -> State:
        return lycoris_adapter.state_dict(core)

    def load(self, core: torch.nn.Module, directory: Path, state: State) -> None:
        lycoris_adapter.load_state_dict(core, state or {})


def trainable_for(plan: Plan) -> Trainable:
    """The plan's choice: model_type 'full', or a LoRA of lora_type 'standard' / 'lycoris'."""
    options = plan.options
    if options.get("controlnet"):
        from st_ray.train.controlnet import ControlNetTrainable  # imports this module

        return ControlNetTrainable(plan.family.name, options)
    if options["model_type"] != "lora":
        return FullTrainable(plan.family.denoiser)
    if lycoris_adapter.enabled(options):
        path = plan.config.config_path
        return LycorisTrainable(options, Path(path).parent if path else None)
    return LoraTrainable(plan.family.name, options)


def modelspec(options: Mapping[str, Any]) -> dict[str, str] | None:
    """modelspec_comment travels in the safetensors header, where model viewers show it."""
    comment = options.get("modelspec_comment")
    return {"modelspec.comment": str(comment)} if comment else None

"""Helpers every family module uses to load and drive its diffusers denoiser."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import checkpointing

if TYPE_CHECKING:
    import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The diffusers model inside DDP (``.module``) or torch.compile (``._orig_mod``) wrappers,
    for reading its config and dtype; the forward call still goes through the wrapper."""
    while True:
        inner = getattr(model, "module", None)
        inner = getattr(model, "_orig_mod", None) if inner is None else inner
        if inner is None:
            return model
        model = inner


def load_pretrained_denoiser(
    kind: str,
    model_class: str,
    model_path: str,
    *,
    dtype: torch.dtype,
    device: torch.device | None,
    options: Mapping[str, Any],
    **load_kwargs: Any,
) -> torch.nn.Module:
    """``diffusers.<model_class>.from_pretrained`` for denoiser ``kind`` ("unet" or
    "transformer"), honouring pretrained_<kind>_model_name_or_path and _subfolder ('none' =
    weights at the top level, as in SimpleTuner), revision, variant and gradient_checkpointing.
    ``load_kwargs`` go to from_pretrained (e.g. a quantization_config); ``device`` None leaves
    the model where from_pretrained placed it.
    """
    import diffusers

    source = options.get(f"pretrained_{kind}_model_name_or_path") or model_path
    subfolder = options.get(f"pretrained_{kind}_subfolder") or kind
    kwargs: dict[str, Any] = {"subfolder": None if subfolder.lower() == "none" else subfolder}
    # Like the T5 override in text_encoders, revision and variant describe the base model
    # repository, so a separate denoiser source is read at its default branch and file names.
    if source == model_path:
        kwargs.update({k: options[k] for k in ("revision", "variant") if options.get(k)})
    model = getattr(diffusers, model_class).from_pretrained(
        source, torch_dtype=dtype, **kwargs, **load_kwargs
    )
    checkpointing.enable(model, options)
    return model if device is None else model.to(device)


def noise_scheduler_config(model_path: str, options: Mapping[str, Any]) -> dict:
    """scheduler/scheduler_config.json of the pipeline (read the same way for every family)."""
    # Any scheduler class reads the file: load_config does not check _class_name.
    from diffusers import DDPMScheduler

    kwargs = {"revision": options["revision"]} if options.get("revision") else {}
    return dict(DDPMScheduler.load_config(model_path, subfolder="scheduler", **kwargs))


def conditioning(
    batch: Mapping[str, torch.Tensor], key: str, like: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``batch[key]`` on ``like``'s device in ``dtype`` (the denoiser's compute dtype)."""
    return batch[key].to(device=like.device, dtype=dtype)

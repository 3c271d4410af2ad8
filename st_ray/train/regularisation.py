"""Regularisation (prior-preservation) data, as SimpleTuner trains it: for samples of a dataset
marked ``is_regularisation_data`` the target is the base model's own prediction (the denoiser
with the adapter switched off) for the same noisy input, not the image's noise/velocity
target, so the adapter learns to leave those prompts as the base model renders them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from st_ray.train import lycoris_adapter


def regularisation_ids(datasets: Iterable[Any]) -> frozenset[str]:
    """Ids of the datasets (``DatasetSamples``) whose samples are regularisation data."""
    return frozenset(d.dataset_id for d in datasets if getattr(d, "is_regularisation", False))


def is_regularisation_batch(datasets: Iterable[Any], batch: Mapping[str, Any]) -> bool:
    """A batch holds one dataset's samples (data_feed.collate): is it regularisation data?"""
    return batch.get("dataset_id") in regularisation_ids(datasets)


@contextlib.contextmanager
def adapter_disabled(denoiser: torch.nn.Module) -> Iterator[None]:
    """The base model for the block: the LyCORIS network at multiplier 0, or every PEFT LoRA
    layer disabled; restored afterwards (also on error)."""
    network = lycoris_adapter.network_of(denoiser)
    if network is not None:
        before = network.multiplier
        network.set_multiplier(0.0)
        try:
            yield
        finally:
            network.set_multiplier(before)
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [
        m for m in denoiser.modules() if isinstance(m, BaseTunerLayer) and not m.disable_adapters
    ]
    if not layers:
        raise ValueError(
            "is_regularisation_data needs an adapter to switch off (model_type lora, with a "
            "LoRA or LyCORIS network); this denoiser has none"
        )
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def base_model_target(
    predict: Callable[[torch.Generator | None], torch.Tensor],
    denoiser: torch.nn.Module,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``predict(generator)`` (the denoiser's prediction for this batch's noisy input) with the
    adapter off and no gradient: the target for regularisation samples. It draws from a copy
    of ``generator``, so the training pass that follows draws the same values (a random
    guidance value, say) and the run's random stream is unchanged."""
    copy = None
    if generator is not None:
        copy = torch.Generator(device=generator.device)
        copy.set_state(generator.get_state())
    with torch.no_grad(), adapter_disabled(denoiser):
        return predict(copy).detach().float()

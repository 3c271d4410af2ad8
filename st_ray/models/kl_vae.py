"""AutoencoderKL training latents: the scaled, shifted posterior sample the pipelines' training
scripts cache, and its decode back to pixels (the families' default ``encode_latents`` /
``decode_latents``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def kl_latents(
    vae: Any, pixels: torch.Tensor, noise_like: Callable[[tuple[int, ...]], torch.Tensor]
) -> torch.Tensor:
    """An AutoencoderKL posterior sample (mean + std * fixed noise), shifted and scaled by the
    VAE config's ``shift_factor`` / ``scaling_factor`` (what the pipelines invert on decode)."""
    dist = vae.encode(pixels).latent_dist
    noise = noise_like(tuple(dist.mean.shape[1:])).to(dist.mean.device, dist.mean.dtype)
    sample = dist.mean + dist.std * noise
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    return (sample - shift) * float(vae.config.scaling_factor)


def kl_pixels(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """``kl_latents`` undone (divide by ``scaling_factor``, add ``shift_factor``), decoded."""
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    return vae.decode(latents / float(vae.config.scaling_factor) + shift).sample

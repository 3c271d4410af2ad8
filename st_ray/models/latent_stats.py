"""Latents of the Wan-style causal video VAEs (AutoencoderKLQwenImage, AutoencoderKLWan).

They take (B, 3, F, H, W) input and their pipelines normalise latents per channel with the
config's ``latents_mean`` / ``latents_std`` instead of a scaling factor. Images are one-frame
videos: the frame axis is added for the VAE and dropped again, so the cache holds (C, h, w)
like every other family and ``predict`` re-adds the axis where the denoiser needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def channel_stats(vae_config: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the config, shaped (1, C, 1, 1, 1) on ``like``'s device and dtype."""
    import torch

    shape = (1, int(vae_config.z_dim), 1, 1, 1)
    mean = torch.tensor(vae_config.latents_mean).view(shape).to(like.device, like.dtype)
    std = torch.tensor(vae_config.latents_std).view(shape).to(like.device, like.dtype)
    return mean, std


def normalised_latents(
    vae: Any,
    pixels: torch.Tensor,
    noise_like: Callable[[tuple[int, ...]], torch.Tensor],
    *,
    scale: float = 1.0,
) -> torch.Tensor:
    """(B, C, h, w): a posterior sample (mean + std * fixed noise) of the one-frame video,
    minus ``latents_mean``, over ``latents_std``, times ``scale`` (Cosmos' sigma_data) — the
    exact inverse of what the pipelines do before ``vae.decode``."""
    dist = vae.encode(pixels.unsqueeze(2)).latent_dist
    noise = noise_like(tuple(dist.mean.shape[1:])).to(dist.mean.device, dist.mean.dtype)
    sample = dist.mean + dist.std * noise
    mean, std = channel_stats(vae.config, sample)
    return ((sample - mean) / std * scale).squeeze(2)


def denormalised_pixels(vae: Any, latents: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    """``normalised_latents`` undone (over ``scale``, times ``latents_std``, plus
    ``latents_mean``) and decoded as a one-frame video: pixels (B, 3, H, W)."""
    frames = latents.unsqueeze(2) / scale
    mean, std = channel_stats(vae.config, frames)
    return vae.decode(frames * std + mean).sample.squeeze(2)

"""Ray Data actor classes that encode images to latents and captions to text embeddings.

Each actor loads its model once (on a GPU when the actor was given one) and then encodes
the batches Ray Data streams to it. Batches are dicts of numpy arrays ("numpy" format).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from st_ray.device import pick_device, torch_dtype
from st_ray.models.quantize import quantize_text_encoders

# Paired conditioning pixels (st_ray.data.conditioning.PIXELS), stored beside the latent.
CONDITIONING_PIXELS = "conditioning_pixels"
# Rows that are not freshly decoded images pass through the VAE stage untouched.
ENCODE_STATUS = "ok"
# Columns a latent shard carries besides the latent, with fixed Arrow types so every shard
# (and every Ray block) has the same schema.
PASS_THROUGH = {
    "dataset_id": pa.string(),
    "image_id": pa.string(),
    "uri": pa.string(),
    "status": pa.string(),
    "content_hash": pa.string(),
    "original_width": pa.int32(),
    "original_height": pa.int32(),
    "bucket_width": pa.int32(),
    "bucket_height": pa.int32(),
    "crop_left": pa.int32(),
    "crop_top": pa.int32(),
}


def _plain(value: Any) -> Any:
    """numpy scalars -> Python values for pa.array. Ray hands integer columns with missing
    values over as floats with NaN: those become None and whole numbers ints again."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else int(value) if value.is_integer() else value
    return value


def latent_storage_dtype(vae_dtype: str) -> np.dtype:
    """Latents are stored in fp16 (half the disk), or fp32 when the VAE runs in fp32."""
    return np.dtype(np.float32) if vae_dtype == "fp32" else np.dtype(np.float16)


def vae_encoder_kwargs(plan: Any, seed: int = 0) -> dict[str, Any]:
    """``VaeEncoder``'s keyword arguments for a run's plan (model, family and the vae_*
    options): the caching actor pool, the sequential benchmark and CREPA build it alike."""
    options = plan.options
    return {
        "model_path": plan.model,
        "family": plan.family.name,
        "vae_path": options.get("pretrained_vae_model_name_or_path"),
        "vae_dtype": str(options.get("vae_dtype") or "default"),
        "revision": options.get("revision"),
        "enable_slicing": bool(options.get("vae_enable_slicing")),
        "enable_tiling": bool(options.get("vae_enable_tiling")),
        "seed": seed,
    }


class VaeEncoder:
    """Encodes uint8 HxWx3 ``pixels`` (FxHxWx3 for clips) to the family's training latents;
    groups a batch by bucket shape."""

    def __init__(
        self,
        model_path: str,
        *,
        family: str,
        vae_path: str | None = None,
        vae_dtype: str = "default",
        revision: str | None = None,
        enable_slicing: bool = False,
        enable_tiling: bool = False,
        seed: int = 0,
    ) -> None:
        from st_ray.models.family import get_family_module

        self.family = get_family_module(family)
        self.model_path, self.vae_path, self.revision = model_path, vae_path, revision
        self.slicing, self.tiling = enable_slicing, enable_tiling
        self.device = pick_device()
        self.dtype = torch_dtype(vae_dtype, self.device)
        self.store_dtype = latent_storage_dtype(vae_dtype)
        self.seed = seed
        self._vae = None  # loaded on the first batch with an image to encode

    @property
    def vae(self):
        """The family's VAE (None in pixel space), loaded lazily: a re-run whose images are all
        cached never loads it."""
        vae_class = self.family.spec.vae_class
        if self._vae is None and vae_class is not None:
            import diffusers

            source = (
                {"pretrained_model_name_or_path": self.vae_path}
                if self.vae_path
                else {"pretrained_model_name_or_path": self.model_path, "subfolder": "vae"}
            )
            vae = getattr(diffusers, vae_class).from_pretrained(
                **source, revision=self.revision, torch_dtype=self.dtype
            )
            vae.to(self.device).eval().requires_grad_(False)
            if self.slicing:
                vae.enable_slicing()
            if self.tiling:
                vae.enable_tiling()
            self._vae = vae
        return self._vae

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        count = len(batch["status"])
        latents: list[bytes | None] = [None] * count
        shapes: list[list[int] | None] = [None] * count
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i in range(count):
            if batch["status"][i] == ENCODE_STATUS:
                groups[batch["pixels"][i].shape].append(i)
        for rows in groups.values():
            pixels = np.stack([batch["pixels"][i] for i in rows])
            encoded = self.encode(pixels, [str(batch["content_hash"][i]) for i in rows])
            for i, latent in zip(rows, encoded, strict=True):
                latents[i] = latent.tobytes()
                shapes[i] = list(latent.shape)
        columns = {
            name: pa.array([_plain(v) for v in batch[name]], type=kind)
            for name, kind in PASS_THROUGH.items()
        }
        columns["captions"] = pa.array(
            [json.loads(c) for c in batch["captions_json"]], type=pa.list_(pa.string())
        )
        columns["latent"] = pa.array(latents, type=pa.binary())
        columns["latent_shape"] = pa.array(shapes, type=pa.list_(pa.int32()))
        columns["latent_dtype"] = pa.array(
            [self.store_dtype.name if s else None for s in shapes], type=pa.string()
        )
        if CONDITIONING_PIXELS in batch:  # paired conditioning images ride along, as uint8
            aligned = [batch[CONDITIONING_PIXELS][i] if shapes[i] else None for i in range(count)]
            columns["conditioning"] = pa.array(
                [a.tobytes() if a is not None else None for a in aligned], type=pa.binary()
            )
            columns["conditioning_shape"] = pa.array(
                [list(a.shape) if a is not None else None for a in aligned],
                type=pa.list_(pa.int32()),
            )
            columns["conditioning_dtype"] = pa.array(
                ["uint8" if a is not None else None for a in aligned], type=pa.string()
            )
        return pa.table(columns)

    def encode(self, pixels: np.ndarray, keys: list[str]) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, C, h, w) latents as the family trains on them; clips
        (B, F, H, W, 3) -> (B, C, f, h, w)."""
        x = torch.from_numpy(pixels).to(self.device)
        x = x.permute(0, 4, 1, 2, 3) if x.ndim == 5 else x.permute(0, 3, 1, 2)
        x = (x.to(self.dtype) / 127.5) - 1.0

        def noise_like(shape: tuple[int, ...]) -> torch.Tensor:
            # Noise per image from its content hash: the same image always caches the same
            # latent, whatever batch it landed in.
            return torch.stack([_noise_for(key, self.seed, shape) for key in keys])

        latents = self.family.encode_latents(self.vae, x, noise_like)
        return latents.float().cpu().numpy().astype(self.store_dtype)


def _noise_for(key: str, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed((int(key[:15], 16) + seed) % (2**63))
    return torch.randn(shape, generator=generator)


class TextEncoder:
    """Encodes distinct captions with the family's text encoders (``encode_prompts``)."""

    def __init__(self, family: str, model_path: str, options: Mapping[str, Any]) -> None:
        from st_ray.models.family import get_family_module

        self.module = get_family_module(family)
        self.options = dict(options)
        self.device = pick_device()
        dtype = torch_dtype("default", self.device)
        self.encoders = self.module.load_text_encoders(
            model_path, device=self.device, dtype=dtype, options=self.options
        )
        # text_encoder_N_precision: quantised once per actor, for caching.
        quantize_text_encoders(self.encoders.models, self.options, self.device)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        captions = [str(c) for c in batch["caption"]]
        encoded = self.module.encode_prompts(self.encoders, captions, options=self.options)
        out: dict[str, np.ndarray] = {
            "caption": np.array(captions, dtype=object),
            "caption_hash": batch["caption_hash"],
        }
        for key, array in encoded.items():
            array = np.asarray(array)
            out[key] = np.array([row.tobytes() for row in array], dtype=object)
            out[f"{key}_shape"] = np.array([list(row.shape) for row in array], dtype=object)
            out[f"{key}_dtype"] = np.array([array.dtype.name] * len(captions), dtype=object)
        return out

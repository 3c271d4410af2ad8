"""The caching benchmark's baseline: the pipeline's work in one process, one image after
another, with the same encoder classes and settings (no Ray)."""

from __future__ import annotations

import hashlib
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from st_ray.data import discovery
from st_ray.data.bucket_settings import BucketSettings
from st_ray.data.bucketing import plan_image
from st_ray.data.captions import resolve_captions
from st_ray.data.encoders import TextEncoder, VaeEncoder, vae_encoder_kwargs
from st_ray.data.transforms import apply_plan, load_image
from st_ray.plan import Plan, build_plan


@dataclass
class SequentialRun:
    seconds: float  # everything, model loading included
    load_seconds: float  # constructing the two encoders (imports included)
    images: int
    captions: int


def run_sequential(config: Path, out_dir: Path, threads: int = 1) -> SequentialRun:
    """The pipeline's work in one process, one image after another, same classes and settings.

    torch runs with ``threads`` threads: 1 matches each Ray worker (Ray sets OMP_NUM_THREADS
    to the worker's CPUs), and spares a busy machine from OpenMP oversubscription, which can
    slow every op tens of times when the cores are shared.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _sequential(build_plan(config, [], {}), out_dir)
    finally:
        torch.set_num_threads(previous)


def _sequential(plan: Plan, out_dir: Path) -> SequentialRun:
    options = plan.options
    entry = next(d for d in plan.datasets if d.is_image)
    seed = int(options.get("seed") or 0)
    buckets = BucketSettings.from_entry(
        entry,
        plan.family.pixel_granularity,
        alignment=int(options["aspect_bucket_alignment"]),
        rounding=int(options["aspect_bucket_rounding"]),
        family=plan.family.name,
    )
    vae_batch = int(options.get("vae_batch_size") or 4)
    text_batch = int(options.get("write_batch_size") or 64)

    start = time.perf_counter()
    vae = VaeEncoder(**vae_encoder_kwargs(plan, seed))  # as the caching actors build it
    plain = {k: v for k, v in options.items() if isinstance(v, str | int | float | bool | None)}
    text = TextEncoder(plan.family.name, plan.model, plain)
    load_seconds = time.perf_counter() - start

    hashes: list[str] = []
    latents: list[bytes] = []
    captions: set[str] = set()
    pending: list[tuple[str, np.ndarray]] = []
    rows = discovery.discover(entry)
    for row in rows:
        data = discovery.read_image_bytes(row)
        digest = hashlib.sha256(data).hexdigest()
        sidecar = Path(row["caption_uri"]).read_bytes() if row.get("caption_uri") else None
        captions.update(
            resolve_captions(
                str(entry["caption_strategy"]),
                image_id=row["image_id"],
                sidecar_text=sidecar,
                meta_caption=None,
                meta_fallback=None,
                entry_fields=entry.fields,
            )
        )
        image = load_image(data)
        # Same per-image random stream as prepare_row, so crops (and latents) match.
        image_plan = plan_image(*image.size, buckets, random.Random(f"{digest}:{seed}"))
        pending.append((digest, apply_plan(image, image_plan)))
        if len(pending) == vae_batch:
            _encode_by_shape(vae, pending, hashes, latents)
            pending = []
    _encode_by_shape(vae, pending, hashes, latents)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"content_hash": hashes, "latent": latents}), out_dir / "vae.parquet")

    ordered = sorted(captions)
    tables = []
    for i in range(0, len(ordered), text_batch):
        chunk = ordered[i : i + text_batch]
        batch = {
            "caption": np.array(chunk, dtype=object),
            "caption_hash": np.array([hashlib.sha256(c.encode()).hexdigest() for c in chunk]),
        }
        encoded = text(batch)
        tables.append(pa.table({k: pa.array(list(v)) for k, v in encoded.items()}))
    if tables:
        pq.write_table(pa.concat_tables(tables), out_dir / "text.parquet")
    return SequentialRun(time.perf_counter() - start, load_seconds, len(hashes), len(ordered))


def _encode_by_shape(
    vae: VaeEncoder, items: list[tuple[str, np.ndarray]], hashes: list[str], latents: list[bytes]
) -> None:
    """One VAE call per bucket shape in ``items``, as VaeEncoder does with a Ray batch."""
    groups: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = defaultdict(list)
    for key, pixels in items:
        groups[pixels.shape].append((key, pixels))
    for group in groups.values():
        keys = [key for key, _ in group]
        hashes.extend(keys)
        latents.extend(x.tobytes() for x in vae.encode(np.stack([p for _, p in group]), keys))

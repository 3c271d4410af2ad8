"""The cache reads that fill each rank's batches (the plan: ``st_ray.train.epoch_plan``).

``load_dataset_samples`` reads a dataset's current index; ``LatentStore`` and ``TextEmbedStore``
read the latents / text embeddings of just the hashes asked for from the committed Parquet
shards, one ranged read per row through the cache's row index (``st_ray.data.cache_rows``; no
row cache by default: the training loop's ``feed.Feed`` reads ahead within a byte budget
instead); ``collate`` stacks a batch into tensors, picking one caption per sample and dropping
it to the empty caption with caption_dropout_probability.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from st_ray.data.cache_rows import CacheRows
from st_ray.data.cache_store import CacheStore
from st_ray.data.conditioning import COLUMN as CONDITIONING
from st_ray.data.conditioning import to_model_range
from st_ray.data.pipeline import LATENTS, TEXT, caption_hash
from st_ray.storage import S3Settings
from st_ray.train.epoch_plan import DatasetSamples
from st_ray.train.samples import Sample, SampleTable


def load_dataset_samples(
    cache_root: str, entry_fields: Mapping[str, Any] | Any, s3: S3Settings | None = None
) -> DatasetSamples:
    """A dataset's samples from its latent cache's current index, with its repeats,
    probability and is_regularisation_data fields (``entry_fields``: the dataset entry's
    fields, or a DatasetEntry)."""
    fields: Mapping[str, Any] = getattr(entry_fields, "fields", entry_fields)
    dataset_id = str(fields["id"])
    store = CacheStore(cache_root, LATENTS, s3)
    manifest = store.read_manifest()
    if manifest is None or not manifest.index:
        raise FileNotFoundError(
            f"{dataset_id}: no latent cache index in {cache_root}; the caching stage "
            "(jobs/cache.py, or jobs/train.py before training) writes it"
        )
    batches = store.iter_index(manifest, list(SampleTable.INDEX_COLUMNS))
    samples = SampleTable.from_batches(dataset_id, batches)
    regularisation = fields.get("is_regularisation_data", fields.get("is_regularization_data"))
    probability = fields.get("probability")
    return DatasetSamples(
        dataset_id=dataset_id,
        samples=samples,
        repeats=int(fields.get("repeats") or 0),
        probability=1.0 if probability is None else float(probability),
        is_regularisation=bool(regularisation),
    )


class _ShardReader:
    """Rows of a committed cache by key (content or caption hash), read through the cache's
    row index (``CacheRows``: one ranged read per row). ``max_cached`` rows are kept in an
    LRU (default 0: none; the training feed reads ahead instead, within a byte budget)."""

    kind: str

    def __init__(
        self, cache_root: str, s3: S3Settings | None = None, *, max_cached: int = 0
    ) -> None:
        self.rows = CacheRows(CacheStore(cache_root, self.kind, s3))
        self.store = self.rows.store
        self.max_cached = max_cached
        self._cache: OrderedDict[str, Any] = OrderedDict()

    @property
    def rows_read(self) -> int:
        """Rows decoded from storage, for tests and logs."""
        return self.rows.rows_read

    def __len__(self) -> int:
        return len(self._cache)

    def _load(self, keys: Iterable[str]) -> dict[str, Any]:
        wanted = list(dict.fromkeys(keys))
        result = {k: self._cache[k] for k in wanted if k in self._cache}
        for key in result:
            self._cache.move_to_end(key)
        missing = [k for k in wanted if k not in result]
        if missing:
            for key, row in self.rows.fetch(missing).items():
                result[key] = self.decode(row)
                self._remember(key, result[key])
        return result

    def _remember(self, key: str, value: Any) -> None:
        if self.max_cached <= 0:
            return
        self._cache[key] = value
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)

    def decode(self, row: dict[str, torch.Tensor]) -> Any:
        """What ``load`` returns per key, from the payload columns ``CacheRows`` read."""
        raise NotImplementedError


class LatentStore(_ShardReader):
    """Latents (C, H/8, W/8) by content hash, in the dtype they were cached in; for a dataset
    with paired conditioning images, {"latent": ..., "conditioning": uint8 (K, H, W, 3)}."""

    kind = LATENTS

    def load(self, content_hashes: Iterable[str]) -> dict[str, Any]:
        return self._load(content_hashes)

    def decode(self, row: dict[str, torch.Tensor]) -> Any:
        return row if CONDITIONING in row else row["latent"]


class TextEmbedStore(_ShardReader):
    """Text-encoder outputs by caption hash: {key: tensor without batch dim} per caption."""

    kind = TEXT

    def load(self, caption_hashes: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
        return self._load(caption_hashes)

    def load_captions(self, captions: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
        """Embeddings of captions given as text, keyed by caption hash (what collate takes)."""
        return self.load(caption_hash(c) for c in captions)

    def decode(self, row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Every column with <name>_shape and <name>_dtype beside it is an embedding.
        return row


def batch_captions(batch_samples: Iterable[Sample]) -> set[str]:
    """Every caption a batch may use (collate picks among them), for TextEmbedStore."""
    return {caption for sample in batch_samples for caption in sample.captions}


def collate(
    batch_samples: Sequence[Sample],
    latents: Mapping[str, torch.Tensor],
    text_embeds: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    caption_dropout_probability: float,
    generator: torch.Generator,
    empty_caption_embeds: Mapping[str, torch.Tensor] | None = None,
    conditioning_sampling: str = "random",
) -> dict[str, Any]:
    """One batch as tensors.

    ``latents``: content hash -> latent; ``text_embeds``: caption hash -> {key: embedding};
    ``empty_caption_embeds``: {key: embedding} of the empty caption, needed when
    ``caption_dropout_probability`` > 0. Random draws, in this order from ``generator``: one
    uniform per sample (dropped when below the probability), then one caption index per
    sample (uniform over its captions, multi-line captions included).

    Returns ``latents`` (B, C, h, w) in the cached dtype; ``text_embeds`` {key: (B, ...)};
    ``original_size`` and ``target_size`` (B, 2) as (height, width) and ``crop_top_left``
    (B, 2) as (top, left), what size-conditioned UNets build their time ids from (diffusers'
    training script: the source image's size; SimpleTuner uses the resized size instead);
    ``caption_dropped`` (B,) bool (SimpleTuner also zeroes those time ids for them); ``captions`` (the text used,
    "" when dropped), ``dataset_id`` and ``bucket`` (width, height).

    Samples with paired conditioning images (``LatentStore`` rows with ``conditioning``) add
    ``conditioning_pixels`` (B, K, 3, H, W) in [-1, 1]: with ``conditioning_sampling``
    'random' one of each sample's K conditioning images (K = 1), drawn after the draws
    above; with 'combined' all of them.
    """
    if not batch_samples:
        raise ValueError("an empty batch")
    buckets = {tuple(s.bucket) for s in batch_samples}
    datasets = {s.dataset_id for s in batch_samples}
    if len(buckets) != 1 or len(datasets) != 1:
        raise ValueError(f"a batch must hold one dataset and one bucket, got {datasets} {buckets}")
    if not 0 <= caption_dropout_probability <= 1:
        raise ValueError("caption_dropout_probability must be within [0, 1]")
    if caption_dropout_probability > 0 and empty_caption_embeds is None:
        raise ValueError("caption dropout needs the empty caption's embeddings")
    missing = [s.content_hash for s in batch_samples if s.content_hash not in latents]
    if missing:
        raise KeyError(f"no latent loaded for {missing[0]}")
    rows_of = [latents[s.content_hash] for s in batch_samples]
    paired = [isinstance(r, Mapping) for r in rows_of]
    if any(paired) and not all(paired):
        raise ValueError("a batch mixes samples with and without conditioning images")

    count = len(batch_samples)
    dropped = torch.rand(count, generator=generator) < caption_dropout_probability
    picks = []
    for sample in batch_samples:
        if not sample.captions:
            raise ValueError(f"sample {sample.content_hash} has no caption")
        picks.append(int(torch.randint(len(sample.captions), (1,), generator=generator)))

    captions: list[str] = []
    rows: list[Mapping[str, torch.Tensor]] = []
    for sample, pick, drop in zip(batch_samples, picks, dropped.tolist(), strict=True):
        if drop:
            captions.append("")
            rows.append(empty_caption_embeds or {})
            continue
        caption = sample.captions[pick]
        embeds = text_embeds.get(caption_hash(caption))
        if embeds is None:
            raise KeyError(f"no text embedding loaded for caption {caption!r}")
        captions.append(caption)
        rows.append(embeds)
    keys = sorted(rows[0])
    if any(sorted(row) != keys for row in rows):
        raise ValueError(f"text embeddings with different keys in one batch: {keys}")

    width, height = batch_samples[0].bucket
    sizes = [s.original_size or s.bucket for s in batch_samples]
    extra = {}
    if all(paired):
        extra["conditioning_pixels"] = _conditioning(
            [r[CONDITIONING] for r in rows_of], conditioning_sampling, generator
        )
        rows_of = [r["latent"] for r in rows_of]
    return {
        **extra,
        "latents": torch.stack(rows_of),
        "text_embeds": {key: torch.stack([row[key] for row in rows]) for key in keys},
        "original_size": torch.tensor([(h, w) for w, h in sizes], dtype=torch.long),
        "crop_top_left": torch.tensor(
            [(s.crop[1], s.crop[0]) for s in batch_samples], dtype=torch.long
        ),
        "target_size": torch.tensor([(height, width)] * count, dtype=torch.long),
        "caption_dropped": dropped,
        "captions": captions,
        "dataset_id": batch_samples[0].dataset_id,
        "bucket": (width, height),
    }


def _conditioning(
    stored: Sequence[torch.Tensor], sampling: str, generator: torch.Generator
) -> torch.Tensor:
    """(B, K, 3, H, W) in [-1, 1] from each sample's uint8 (K, H, W, 3) conditioning images:
    one picked at random per sample ('random', K = 1) or all ('combined')."""
    if sampling == "combined":
        chosen = list(stored)
    elif sampling == "random":
        chosen = []
        for images in stored:
            pick = int(torch.randint(images.shape[0], (1,), generator=generator))
            chosen.append(images[pick : pick + 1])
    else:
        raise ValueError(f"conditioning_multidataset_sampling {sampling!r} is not random/combined")
    return to_model_range(torch.stack(chosen))

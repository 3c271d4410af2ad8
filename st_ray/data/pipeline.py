"""Building the latent and text-embedding caches of a run with Ray Data.

Per image dataset::

    discover (driver: one listing) -> prepare_batch (CPU tasks: hash, decode, bucket, crop,
    captions) -> VaeEncoder (actor pool, GPU when present) -> Parquet shards -> manifest

then, for all datasets together, every distinct caption not cached yet is encoded once by a
TextEncoder actor pool into the text-embedding cache.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from st_ray.config.datasets import DatasetEntry
from st_ray.config.options import CORE_OPTIONS
from st_ray.data import conditioning, discovery, listing
from st_ray.data.auto_captions import caption_missing
from st_ray.data.bucket_settings import BucketSettings
from st_ray.data.cache_index import SHARD_WRITE_ARGS
from st_ray.data.cache_store import CacheStore, Manifest
from st_ray.data.captions import load_caption_filters, with_shuffle_seed
from st_ray.data.encoders import TextEncoder, VaeEncoder, vae_encoder_kwargs
from st_ray.data.prepare import CACHED, OK, PrepareSettings, prepare_batch
from st_ray.data.video_settings import ClipSettings
from st_ray.models.family import LATENT_CACHE, TEXT_CACHE, FamilySpec
from st_ray.placement import ActorRequest, cache_actor_request, cluster_nodes
from st_ray.plan import Plan
from st_ray.storage import S3Settings

EMPTY_CAPTION = ""
LATENTS = "latents"
TEXT = "text_embeds"
# Columns of a latent shard that are cheap to read back (no latents).
LIGHT_COLUMNS = [
    "image_id",
    "content_hash",
    "status",
    "captions",
    "bucket_width",
    "bucket_height",
    "original_width",
    "original_height",
    "crop_left",
    "crop_top",
]


@dataclass
class DatasetReport:
    dataset_id: str
    cache: str
    seen: int = 0
    reused: int = 0
    encoded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    ignored: int = 0  # listed files that are neither images Pillow opens nor captions
    unpaired: dict[str, list[str]] = field(default_factory=dict)  # conditioning id -> images

    @property
    def usable(self) -> int:
        return self.reused + self.encoded


@dataclass
class CacheReport:
    datasets: list[DatasetReport]
    text_cache: str
    captions: int = 0
    captions_reused: int = 0
    captions_encoded: int = 0

    def table(self) -> str:
        reasons = sorted({r for d in self.datasets for r in d.skipped})
        header = ["dataset", "seen", "reused", "encoded", *[f"skip:{r}" for r in reasons]]
        rows = [
            [d.dataset_id, d.seen, d.reused, d.encoded, *[d.skipped.get(r, 0) for r in reasons]]
            for d in self.datasets
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
        lines = [
            "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True))
            for line in [header, *rows]
        ]
        lines += [
            f"{d.dataset_id}: ignored: {d.ignored} files with other extensions"
            for d in self.datasets
            if d.ignored
        ]
        for d in self.datasets:
            lines += conditioning.unpaired_lines(d.dataset_id, d.unpaired)
        lines.append(
            f"text embeddings: {self.captions} distinct captions, {self.captions_reused} "
            f"reused, {self.captions_encoded} encoded -> {self.text_cache}"
        )
        return "\n".join(lines)


def latent_settings(plan: Plan, entry: DatasetEntry) -> dict[str, Any]:
    """Everything that changes a dataset's latents: a different value means a stale cache."""
    options = plan.options
    keys = (
        "resolution",
        "resolution_type",
        "crop",
        "crop_style",
        "crop_aspect",
        "crop_aspect_buckets",
        "minimum_image_size",
        "maximum_image_size",
        "target_downsample_size",
        "max_upscale_threshold",
    )
    return {
        "family": plan.family.name,
        "vae": options.get("pretrained_vae_model_name_or_path") or plan.model,
        "revision": options.get("revision"),
        "vae_dtype": options.get("vae_dtype"),
        "aspect_bucket_alignment": options.get("aspect_bucket_alignment"),
        "aspect_bucket_rounding": options.get("aspect_bucket_rounding"),
        "seed": options.get("seed") or 0,
        **{k: entry.fields.get(k) for k in keys},
        **{k: options.get(k) for k in plan.family.cache_options(LATENT_CACHE)},
        **conditioning.cache_settings(plan.datasets, entry),
        **(
            {"video": entry.fields.get("video"), "framerate": options.get("framerate")}
            if entry.is_video
            else {}
        ),
    }


def text_setting_options(family: FamilySpec) -> tuple[str, ...]:
    """Options that change what ``family``'s text encoders produce: the generic ones the
    catalog marks, then those the family owns and marks."""
    generic = [o.name for o in CORE_OPTIONS if TEXT_CACHE in o.caches]
    return (*generic, *family.cache_options(TEXT_CACHE))


def text_settings(plan: Plan) -> dict[str, Any]:
    return {
        "family": plan.family.name,
        "model": plan.model,
        **{k: plan.options.get(k) for k in text_setting_options(plan.family)},
    }


def text_cache_root(plan: Plan, entry: DatasetEntry | None = None) -> str:
    """The text_embeds dataset an image dataset names, else the default one, else
    cache_dir_text."""
    text_sets = {d.id: d for d in plan.datasets if d.dataset_type == "text_embeds"}
    wanted = entry.fields.get("text_embeds") if entry else None
    if wanted and wanted in text_sets:
        return str(text_sets[wanted]["cache_dir"])
    defaults = [d for d in text_sets.values() if d.fields.get("default")] or list(
        text_sets.values()
    )
    if defaults:
        return str(defaults[0]["cache_dir"])
    return str(plan.options.get("cache_dir_text") or plan.output_dir / "cache" / "text")


def build_caches(plan: Plan) -> CacheReport:
    """Bring every dataset's latent cache and the text cache up to date. Needs Ray running."""
    s3 = S3Settings.from_options(plan.options)
    reports = []
    captions: set[str] = set()
    for entry in [d for d in plan.datasets if d.holds_images]:
        report, dataset_captions = cache_dataset(plan, entry)
        reports.append(report)
        captions |= dataset_captions
    text_root = text_cache_root(plan)
    report = CacheReport(reports, text_root, captions=len(captions))
    report.captions_reused, report.captions_encoded = cache_text(plan, captions, text_root, s3)
    return report


def cache_dataset(plan: Plan, entry: DatasetEntry) -> tuple[DatasetReport, set[str]]:
    """Bring one dataset's latent cache up to date. Files the stored listing already answers
    (st_ray.data.listing: same size and mtime, or ETag) are neither read nor hashed; only the
    others go through Ray Data, and with none left Ray Data does not run."""
    options = plan.options
    s3_data = S3Settings.from_entry(entry) if entry.backend == "aws" else None
    store = CacheStore(str(entry["cache_dir_vae"]), LATENTS, S3Settings.from_options(options))
    manifest = store.open(
        latent_settings(plan, entry), bool(options.get("override_dataset_config"))
    )
    scan = options.get("vae_cache_scan_behaviour")
    cached = cached_hashes(store, manifest, scan, plan.family)
    rows, ignored = discovery.discover_counted(entry, s3_data)
    if entry.fields.get("captioning_model"):
        rows = caption_missing(entry, rows, s3_data, caching_actors(plan))
    seen = len(rows)
    rows, unpaired = conditioning.paired(plan.datasets, entry, rows)
    report = DatasetReport(entry.id, store.root, seen=seen, ignored=ignored, unpaired=unpaired)
    if not rows:
        store.commit(manifest, [], 0)
        return report, set()

    caption_filters = tuple(load_caption_filters(entry.fields.get("caption_filter_list")))
    seeded = with_shuffle_seed(entry.fields, int(options.get("seed") or 0))
    definition = listing.fingerprint(seeded, caption_filters)
    stored = None if entry.fields.get("scan_for_errors") else store.read_listing(manifest)
    delete = bool(options.get("delete_problematic_images") or options.get("delete_unwanted_images"))
    split = listing.split_rows(rows, stored, definition, cached, retry_skipped=delete)
    run_table = listing.run_table(split.known)
    shards: list[str] = []
    if split.todo:
        shards = _encode_rows(plan, entry, store, split.todo, cached, caption_filters, s3_data)
        new = store.read_shards(shards, LIGHT_COLUMNS)
        run_table = pa.concat_tables(
            [run_table, new.select(run_table.column_names)], promote_options="default"
        )
    statuses = Counter(run_table.column("status").to_pylist())
    report.reused = statuses.pop(CACHED, 0)
    report.encoded = statuses.pop(OK, 0)
    if seen > len(rows):
        statuses[conditioning.NO_PAIR] = seen - len(rows)
    report.skipped = dict(sorted(statuses.items()))
    manifest.summary = {
        "seen": report.seen,
        "reused": report.reused,
        "encoded": report.encoded,
        "skipped": report.skipped,
        "ignored": report.ignored,
    }
    unchanged = (
        not split.todo
        and manifest.index is not None
        and listing.usable_ids(stored) == listing.usable_ids(run_table)
    )
    if not unchanged:
        index = _index(run_table, store, [*manifest.shards, *shards])
        # The index is committed with the shards: one manifest write makes both visible.
        manifest.index = store.write_index(index)
    if split.todo or stored is None or len(split.known) != stored.num_rows:
        manifest.listing = store.write_listing(
            listing.listing_table(run_table, split.keys, definition)
        )
    store.commit(manifest, shards, report.encoded)
    usable = run_table.filter(pc.is_in(run_table.column("status"), pa.array([OK, CACHED])))
    captions = {c for row in usable.column("captions").to_pylist() for c in row}
    return report, captions


def _encode_rows(
    plan: Plan,
    entry: DatasetEntry,
    store: CacheStore,
    rows: list[dict[str, Any]],
    cached: set[str],
    caption_filters: tuple[str, ...],
    s3_data: S3Settings | None,
) -> list[str]:
    """Read, hash, decode and VAE-encode ``rows`` with Ray Data into a new shard folder of
    ``store``; returns the shards written (uncommitted)."""
    import ray.data

    options = plan.options
    settings = PrepareSettings(
        buckets=BucketSettings.from_entry(
            entry,
            plan.family.pixel_granularity,
            alignment=int(options["aspect_bucket_alignment"]),
            rounding=int(options["aspect_bucket_rounding"]),
            family=plan.family.name,
        ),
        caption_strategy=str(entry["caption_strategy"]),
        entry_fields=dict(entry.fields),
        seed=int(options.get("seed") or 0),
        s3=s3_data,
        cached_hashes=frozenset(cached),
        delete_problematic=bool(options.get("delete_problematic_images")),
        delete_unwanted=bool(options.get("delete_unwanted_images")),
        caption_filters=caption_filters,
        conditioning_s3=conditioning.source_s3(plan.datasets, entry),
        clip=ClipSettings.for_entry(entry, plan.options),
    )
    actors = caching_actors(plan)
    run_uri, run_dir = store.new_run_dir()
    (
        ray.data.from_items(rows)
        .map_batches(
            prepare_batch,
            fn_kwargs={"settings": settings},
            batch_size=int(options.get("image_processing_batch_size") or 32),
            batch_format="numpy",
        )
        .map_batches(
            VaeEncoder,
            fn_constructor_kwargs=vae_encoder_kwargs(plan, settings.seed),
            **actors.map_batches_args(),
            batch_size=int(options.get("vae_batch_size") or 4),
            batch_format="numpy",
        )
        .write_parquet(
            run_uri,
            filesystem=store.pyarrow_filesystem(),
            compression="zstd" if options.get("compress_disk_cache") else "none",
            **SHARD_WRITE_ARGS,  # one row per row group: the feed reads rows by byte range
        )
    )
    return store.shard_files(run_dir)


def cached_hashes(
    store: CacheStore, manifest: Manifest, scan: str | None, family: FamilySpec
) -> set[str]:
    """Content hashes with a committed latent. ``recreate`` drops entries whose latent shape
    does not match their bucket in ``family``'s latent geometry (e.g. written by a broken run)
    so they are encoded again."""
    if not manifest.shards:
        return set()
    table = store.read_columns(
        manifest, ["content_hash", "status", "latent_shape", "bucket_width", "bucket_height"]
    )
    hashes = set()
    down = family.latent_downscale
    for row in table.to_pylist():
        if row["status"] != OK:
            continue
        # (C, h, w) for an image, (C, frames, h, w) for a clip.
        shape = row["latent_shape"] or []
        consistent = len(shape) in (3, 4) and (shape[0], shape[-2] * down, shape[-1] * down) == (
            family.latent_channels,
            row["bucket_height"],
            row["bucket_width"],
        )
        if consistent or scan == "sync":
            hashes.add(row["content_hash"])
    return hashes


def _index(run_table: pa.Table, store: CacheStore, shards: list[str]) -> pa.Table:
    """The dataset as of this run: usable images with their hash, captions and bucket."""
    usable = run_table.filter(pc.is_in(run_table.column("status"), pa.array([OK, CACHED])))
    committed = store.read_shards(shards, LIGHT_COLUMNS)
    committed = committed.filter(pc.equal(committed.column("status"), OK))
    by_hash = {row["content_hash"]: row for row in committed.to_pylist()}
    rows = []
    for row in usable.select(["image_id", "content_hash", "captions"]).to_pylist():
        latent = by_hash.get(row["content_hash"])
        if latent is None:
            continue
        rows.append({**row, **{k: latent[k] for k in LIGHT_COLUMNS[4:]}})
    return pa.Table.from_pylist(rows) if rows else pa.table({"image_id": pa.array([], pa.string())})


def caption_hash(caption: str) -> str:
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


def cache_text(plan: Plan, captions: set[str], root: str, s3: S3Settings | None) -> tuple[int, int]:
    """Encode each caption not yet in the text cache exactly once. Returns (reused, encoded)
    counted over ``captions``; the empty caption (what caption dropout trains with) is always
    cached too."""
    import ray.data

    store = CacheStore(root, TEXT, s3)
    manifest = store.open(text_settings(plan), bool(plan.options.get("override_dataset_config")))
    known = set()
    if manifest.shards:
        known = set(store.read_columns(manifest, ["caption_hash"]).column(0).to_pylist())
    todo = sorted(c for c in captions | {EMPTY_CAPTION} if caption_hash(c) not in known)
    encoded = len([c for c in todo if c in captions])
    if not todo:
        store.commit(manifest, [], 0)
        return len(captions), 0
    actors = caching_actors(plan)
    run_uri, run_dir = store.new_run_dir()
    (
        ray.data.from_items([{"caption": c, "caption_hash": caption_hash(c)} for c in todo])
        .map_batches(
            TextEncoder,
            fn_constructor_kwargs={
                "family": plan.family.name,
                "model_path": plan.model,
                "options": _plain(plan.options),
            },
            **actors.map_batches_args(),
            batch_size=text_batch_size(plan),
            batch_format="numpy",
        )
        .write_parquet(run_uri, filesystem=store.pyarrow_filesystem(), **SHARD_WRITE_ARGS)
    )
    shards = store.shard_files(run_dir)
    store.commit(manifest, shards, len(todo))
    return len(captions) - encoded, encoded


def text_batch_size(plan: Plan) -> int:
    """text_encoder_batch_size (or write_batch_size) of the text_embeds dataset, else the
    run-wide write_batch_size, else 64."""
    for entry in plan.datasets:
        if entry.dataset_type == "text_embeds" and entry.fields.get("default", True):
            size = entry.fields.get("text_encoder_batch_size") or entry.fields.get(
                "write_batch_size"
            )
            if size:
                return int(size)
    return int(plan.options.get("write_batch_size") or 64)


def _plain(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if isinstance(v, str | int | float | bool | None)}


def caching_actors(plan: Plan) -> ActorRequest:
    """Each caching actor's resources and the pool bound (cache_* options), for the nodes
    of the connected cluster."""
    return cache_actor_request(plan.options, cluster_nodes())

"""Benchmark of the caching stage (``st_ray.data.pipeline.build_caches``).

One run, one local Ray instance, one tiny zoo model, synthetic images:

1. throughput of a cold ``build_caches`` (empty cache) against a plain single-process loop
   doing the same work (read, sha256, decode, bucket, resize/crop, VAE encode, encode each
   distinct caption once, write Parquet) with the same encoder classes in-process;
2. a warm ``build_caches`` (everything cached) against the cold one;
3. peak RSS of the driver plus every process below it (Ray's daemons and workers) during a
   cold run at N and at 4N images: Ray Data streams, so it should not grow with N.

Both sides of (1) include loading their models: the pipeline's actors load theirs inside
``build_caches`` (starting their processes and importing torch/diffusers too), so the
sequential loop is timed with its encoder construction as well.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from st_ray import zoo
from st_ray.bench.workdir import run_and_report
from st_ray.data import discovery
from st_ray.data.bucket_settings import BucketSettings
from st_ray.data.bucketing import plan_image
from st_ray.data.captions import resolve_captions
from st_ray.data.encoders import TextEncoder, VaeEncoder
from st_ray.data.pipeline import CacheReport, build_caches
from st_ray.data.transforms import apply_plan, load_image
from st_ray.plan import Plan, build_plan

# A small vocabulary so captions repeat: at most len(_ADJECTIVES) * len(_NOUNS) distinct.
_ADJECTIVES = ("red", "blue", "green", "striped", "glowing", "tiny")
_NOUNS = ("cube", "sphere", "tower", "landscape")
MIB = 1024 * 1024
SAMPLE_EVERY_S = 0.05


def generate_images(
    folder: Path, count: int, seed: int = 0, sides: tuple[int, int] = (256, 768)
) -> int:
    """``count`` distinct JPEGs (gradient + random shapes) with .txt captions; returns the
    number of distinct captions. Image i depends only on (seed, i): a bigger set made with the
    same seed starts with the same images."""
    folder.mkdir(parents=True, exist_ok=True)
    captions = set()
    for i in range(count):
        rng = random.Random(f"{seed}:{i}")
        width, height = rng.randint(*sides), rng.randint(*sides)
        start, end = (
            np.array([rng.randint(0, 255) for _ in range(3)], np.float32) for _ in range(2)
        )
        angle = rng.uniform(0, np.pi / 2)
        ramp = (
            np.cos(angle) * np.linspace(0, 1, width)[None, :]
            + np.sin(angle) * np.linspace(0, 1, height)[:, None]
        )
        ramp = (ramp / ramp.max())[..., None]
        image = Image.fromarray((start * (1 - ramp) + end * ramp).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(2, 6)):
            x0, y0 = rng.randrange(width), rng.randrange(height)
            box = (x0, y0, x0 + rng.randint(8, width // 2), y0 + rng.randint(8, height // 2))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape(box, fill=tuple(rng.randint(0, 255) for _ in range(3)))
        image.save(folder / f"img_{i:05d}.jpg", quality=90)
        caption = f"a {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        (folder / f"img_{i:05d}.txt").write_text(caption + "\n")
        captions.add(caption)
    return len(captions)


def write_config(run_dir: Path, model: Path, images: Path, family: str, resolution: int) -> Path:
    """A SimpleTuner-style config.json + multidatabackend.json, caches inside ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    datasets = [
        {
            "id": "bench",
            "type": "local",
            "instance_data_dir": str(images),
            "caption_strategy": "textfile",
            "resolution": resolution,
            "resolution_type": "pixel_area",
            "cache_dir_vae": str(run_dir / "cache" / "vae"),
        },
        {
            "id": "embeds",
            "dataset_type": "text_embeds",
            "default": True,
            "type": "local",
            "cache_dir": str(run_dir / "cache" / "text"),
        },
    ]
    (run_dir / "multidatabackend.json").write_text(json.dumps(datasets))
    config = {
        "model_family": family,
        "pretrained_model_name_or_path": str(model),
        "output_dir": str(run_dir / "out"),
        "data_backend_config": str(run_dir / "multidatabackend.json"),
        "max_train_steps": 1,
        "seed": 0,
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir / "config.json"


def _session_processes() -> list[psutil.Process]:
    """The driver and every process below it. A local Ray instance started by this process
    (ours or a test fixture's) has its raylet, and so all its workers, in that tree; when Ray
    was started elsewhere, its ``ray::`` worker processes are added instead."""
    me = psutil.Process()
    tree = [me, *me.children(recursive=True)]
    if any(_name(p) == "raylet" for p in tree):
        return tree
    mine = {p.pid for p in tree}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["pid"] not in mine and cmdline and cmdline[0].startswith("ray::"):
            tree.append(proc)
    return tree


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:  # exited since the listing
        return ""


def session_rss() -> int:
    """Summed RSS in bytes; shared pages (the object store's) count in every process mapping
    them, so this over- rather than under-states memory."""
    total = 0
    for proc in _session_processes():
        try:
            total += proc.memory_info().rss
        except psutil.Error:  # exited between the listing and the read
            continue
    return total


class PeakRss:
    """Samples ``session_rss`` in a background thread every SAMPLE_EVERY_S seconds."""

    def __init__(self) -> None:
        self.peak = session_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.peak = max(self.peak, session_rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, session_rss())


@dataclass
class PipelineRun:
    seconds: float
    peak_rss: int
    rss_before: int
    report: CacheReport


def timed_build(config: Path) -> PipelineRun:
    """One ``build_caches`` on ``config``: wall time (planning excluded) and peak RSS."""
    plan = build_plan(config, [], {})
    before = session_rss()
    with PeakRss() as memory:
        start = time.perf_counter()
        report = build_caches(plan)
        seconds = time.perf_counter() - start
    return PipelineRun(seconds, memory.peak, before, report)


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
    vae = VaeEncoder(
        plan.model,
        family=plan.family.name,
        vae_path=options.get("pretrained_vae_model_name_or_path"),
        vae_dtype=str(options.get("vae_dtype") or "default"),
        revision=options.get("revision"),
        seed=seed,
    )
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


@contextmanager
def _ray_session(cpus: int | None) -> Iterator[None]:
    """Start one local Ray instance unless one is already up (a test's, a caller's); Ray
    Data's progress bars are silenced so the table is readable."""
    import ray
    from ray.data import DataContext

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False)
    context = DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.enable_progress_bars = bars
        if started:
            ray.shutdown()


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def _check(run: PipelineRun, images: int, cached: bool) -> None:
    (dataset,) = run.report.datasets
    done = dataset.reused if cached else dataset.encoded
    if done != images or dataset.skipped:
        raise RuntimeError(
            f"expected {images} images {'reused' if cached else 'encoded'}, got "
            f"{dataset} (check --resolution against the image sizes)"
        )


def run_benchmark(
    workdir: Path,
    *,
    images: int = 64,
    family: str = zoo.DEMO_FAMILY,
    resolution: int = 128,
    cpus: int | None = None,
    warmup: int = 4,
    sequential_threads: int = 1,
    zoo_root: Path | None = None,
    warm_cold_only: bool = False,
) -> dict[str, Any]:
    """Run every measurement; the returned figures are plain JSON values. Uses the running
    Ray instance if there is one, else starts (and stops) a local one with ``cpus``.
    ``warm_cold_only``: only (2), without the sequential loop and the 4N run."""
    if images < 1:
        raise ValueError("--images must be at least 1")
    model = zoo.ensure(family, zoo_root or workdir / "models")
    small, large = workdir / "data" / f"n{images}", workdir / "data" / f"n{4 * images}"
    distinct = generate_images(_fresh(small), images)
    if not warm_cold_only:
        generate_images(_fresh(large), 4 * images)

    def config(name: str, data: Path) -> Path:
        return write_config(_fresh(workdir / "runs" / name), model, data, family, resolution)

    with _ray_session(cpus):
        import ray

        resources = ray.cluster_resources()
        if warmup:
            # Untimed: starts Ray's worker processes so the first measured run is not billed
            # for them.
            warm_data = _fresh(workdir / "data" / "warmup")
            generate_images(warm_data, warmup, seed=1)
            timed_build(config("warmup", warm_data))
        small_config = config("small", small)
        cold = timed_build(small_config)
        _check(cold, images, cached=False)
        warm = timed_build(small_config)
        _check(warm, images, cached=True)
        if warm_cold_only:
            return _warm_cold(family, resolution, images, distinct, warmup, resources, cold, warm)
        big = timed_build(config("large", large))
        _check(big, 4 * images, cached=False)
        sequential = run_sequential(
            small_config, _fresh(workdir / "runs" / "sequential"), sequential_threads
        )
    if sequential.images != images:
        raise RuntimeError(f"sequential loop encoded {sequential.images} of {images} images")

    pipeline_ips = images / cold.seconds
    sequential_ips = sequential.images / sequential.seconds
    return {
        "family": family,
        "resolution": resolution,
        "images": images,
        "distinct_captions": distinct,
        "warmup_images": warmup,
        "sequential_torch_threads": sequential_threads,
        "ray_cpus": int(resources.get("CPU", 0)),
        "ray_gpus": int(resources.get("GPU", 0)),
        "pipeline_cold_s": cold.seconds,
        "pipeline_images_per_s": pipeline_ips,
        "sequential_s": sequential.seconds,
        "sequential_model_load_s": sequential.load_seconds,
        "sequential_images_per_s": sequential_ips,
        "sequential_images_per_s_without_load": sequential.images
        / (sequential.seconds - sequential.load_seconds),
        "ratio_pipeline_vs_sequential": pipeline_ips / sequential_ips,
        "pipeline_warm_s": warm.seconds,
        "ratio_warm_vs_cold": warm.seconds / cold.seconds,
        "large_images": 4 * images,
        "large_cold_s": big.seconds,
        "large_images_per_s": 4 * images / big.seconds,
        "rss_before_small_mib": cold.rss_before / MIB,
        "peak_rss_small_mib": cold.peak_rss / MIB,
        "rss_before_large_mib": big.rss_before / MIB,
        "peak_rss_large_mib": big.peak_rss / MIB,
        "ratio_peak_rss_large_vs_small": big.peak_rss / cold.peak_rss,
    }


def _warm_cold(
    family: str,
    resolution: int,
    images: int,
    distinct: int,
    warmup: int,
    resources: dict[str, float],
    cold: PipelineRun,
    warm: PipelineRun,
) -> dict[str, Any]:
    return {
        "family": family,
        "resolution": resolution,
        "images": images,
        "distinct_captions": distinct,
        "warmup_images": warmup,
        "ray_cpus": int(resources.get("CPU", 0)),
        "ray_gpus": int(resources.get("GPU", 0)),
        "pipeline_cold_s": cold.seconds,
        "pipeline_images_per_s": images / cold.seconds,
        "pipeline_warm_s": warm.seconds,
        "ratio_warm_vs_cold": warm.seconds / cold.seconds,
    }


def format_report(r: dict[str, Any]) -> str:
    n = r["images"]
    setup = (
        f"{r['family']} tiny model, {r['resolution']}px pixel_area, {r['distinct_captions']}"
        f" distinct captions in {n} images, Ray CPUs {r['ray_cpus']}, GPUs {r['ray_gpus']}"
    )
    if "large_images" not in r:  # --warm-cold-only
        return "\n".join(
            [
                f"setup  {setup}",
                f"pipeline cold, {n} images  "
                + _rate(r["pipeline_cold_s"], r["pipeline_images_per_s"]),
                f"pipeline warm, {n} images  {r['pipeline_warm_s']:.2f} s (files unchanged)",
                "timed:  build_caches() wall time, the plan built before, Ray already running.",
                f"ratio warm/cold time: {r['ratio_warm_vs_cold']:.3f}x   (goal <= 0.05)",
            ]
        )
    big = r["large_images"]
    rows = [
        ("setup", setup),
        (f"pipeline cold, {n} images", _rate(r["pipeline_cold_s"], r["pipeline_images_per_s"])),
        (f"sequential, {n} images", _rate(r["sequential_s"], r["sequential_images_per_s"])),
        (
            "  of which model load",
            f"{r['sequential_model_load_s']:.2f} s (without it: "
            f"{r['sequential_images_per_s_without_load']:.2f} images/s)",
        ),
        (f"pipeline warm, {n} images", f"{r['pipeline_warm_s']:.2f} s"),
        (f"pipeline cold, {big} images", _rate(r["large_cold_s"], r["large_images_per_s"])),
        (f"RSS before/peak, {n} images", _rss(r["rss_before_small_mib"], r["peak_rss_small_mib"])),
        (
            f"RSS before/peak, {big} images",
            _rss(r["rss_before_large_mib"], r["peak_rss_large_mib"]),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    warmed = (
        f", warmed up by an untimed {r['warmup_images']}-image run" if r["warmup_images"] else ""
    )
    return "\n".join(
        [
            *(f"{name.ljust(width)}  {value}" for name, value in rows),
            "",
            "timed:  pipeline = build_caches() wall time; the plan is built before and Ray is",
            f"        already running{warmed}.",
            "        sequential = the loop's wall time in this process, torch threads:"
            f" {r['sequential_torch_threads']} (each Ray worker uses 1).",
            "        Both include constructing the VAE and text encoder; the pipeline's actors",
            "        also start their processes and import torch/diffusers on every run.",
            "memory: summed RSS of the driver and all its descendant processes (Ray daemons and",
            f"        workers), sampled every {SAMPLE_EVERY_S * 1000:.0f} ms; pages shared between"
            " processes count in each.",
            "",
            f"ratio pipeline/sequential throughput: {r['ratio_pipeline_vs_sequential']:.2f}x",
            f"ratio warm/cold time: {r['ratio_warm_vs_cold']:.3f}x   (goal <= 0.05)",
            f"ratio peak RSS {big}/{n} images: {r['ratio_peak_rss_large_vs_small']:.2f}x",
        ]
    )


def _rate(seconds: float, per_second: float) -> str:
    return f"{seconds:.2f} s, {per_second:.2f} images/s"


def _rss(before: float, peak: float) -> str:
    return f"{before:.0f} / {peak:.0f} MiB"


def main(args: argparse.Namespace) -> int:
    return run_and_report(
        args,
        "st_ray-bench-",
        lambda workdir: run_benchmark(
            workdir,
            images=args.images,
            family=args.family,
            resolution=args.resolution,
            cpus=args.cpus,
            warmup=args.warmup,
            sequential_threads=args.sequential_threads,
            warm_cold_only=args.warm_cold_only,
        ),
        format_report,
    )

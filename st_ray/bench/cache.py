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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from st_ray import zoo
from st_ray.bench.inputs import fresh, generate_images, ray_session, write_config
from st_ray.bench.memory import SAMPLE_EVERY_S, PeakRss, session_rss
from st_ray.bench.sequential import run_sequential
from st_ray.bench.workdir import run_and_report
from st_ray.data.pipeline import CacheReport, build_caches
from st_ray.plan import build_plan

MIB = 1024 * 1024


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
    distinct = generate_images(fresh(small), images)
    if not warm_cold_only:
        generate_images(fresh(large), 4 * images)

    def config(name: str, data: Path) -> Path:
        return write_config(fresh(workdir / "runs" / name), model, data, family, resolution)

    with ray_session(cpus):
        import ray

        resources = ray.cluster_resources()
        if warmup:
            # Untimed: starts Ray's worker processes so the first measured run is not billed
            # for them.
            warm_data = fresh(workdir / "data" / "warmup")
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
            small_config, fresh(workdir / "runs" / "sequential"), sequential_threads
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

"""``python -m st_ray.bench cache`` in-process on a very small set: every figure is produced.
No timing assertions: this machine's speed proves nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from st_ray.bench import cache, inputs
from st_ray.bench.__main__ import main

pytestmark = pytest.mark.usefixtures("ray_local")


def test_cache_benchmark_figures(tmp_path: Path, zoo_root: Path) -> None:
    result = cache.run_benchmark(tmp_path, images=8, resolution=64, warmup=0, zoo_root=zoo_root)
    for key in (
        "pipeline_images_per_s",
        "sequential_images_per_s",
        "pipeline_warm_s",
        "ratio_pipeline_vs_sequential",
        "ratio_warm_vs_cold",
        "peak_rss_small_mib",
        "peak_rss_large_mib",
        "ratio_peak_rss_large_vs_small",
    ):
        assert result[key] > 0, key
    assert result["large_images"] == 32
    assert 1 <= result["distinct_captions"] <= 8
    json.dumps(result)  # what --json saves
    report = cache.format_report(result)
    assert "ratio pipeline/sequential throughput:" in report
    assert "ratio warm/cold time:" in report

    # The sequential loop did the pipeline's work: the same latents for the same images.
    runs = tmp_path / "runs"
    pipeline = {
        row["content_hash"]: np.frombuffer(row["latent"], row["latent_dtype"])
        for shard in (runs / "small" / "cache" / "vae" / "shards").rglob("*.parquet")
        for row in pq.read_table(shard).to_pylist()
        if row["status"] == "ok"
    }
    sequential = pq.read_table(runs / "sequential" / "vae.parquet").to_pylist()
    assert sorted(pipeline) == sorted(row["content_hash"] for row in sequential)
    for row in sequential:
        latent = np.frombuffer(row["latent"], pipeline[row["content_hash"]].dtype)
        np.testing.assert_allclose(latent, pipeline[row["content_hash"]], atol=1e-2)


def test_generated_images_are_distinct_and_deterministic(tmp_path: Path) -> None:
    distinct = inputs.generate_images(tmp_path / "a", 6, sides=(64, 96))
    inputs.generate_images(tmp_path / "b", 3, sides=(64, 96))
    a = sorted((tmp_path / "a").glob("*.jpg"))
    b = sorted((tmp_path / "b").glob("*.jpg"))
    assert len({p.read_bytes() for p in a}) == 6 and 1 <= distinct <= 6
    assert [p.read_bytes() for p in a[:3]] == [p.read_bytes() for p in b]  # same seed prefix


def test_cli_requires_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "cache" in capsys.readouterr().err

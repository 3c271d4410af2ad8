"""``python -m st_ray.bench feed`` on tiny caches, local and on its S3 server, new and old
reader: every figure is produced. No timing assertions: this machine's speed proves nothing."""

from __future__ import annotations

import json
from pathlib import Path

from st_ray.bench.__main__ import main


def test_feed_benchmark_figures(tmp_path: Path, capsys) -> None:
    out = tmp_path / "feed.json"
    args = ["feed", "--rows", "30", "--s3-rows", "30", "--steps", "5", "--warmup", "1"]
    args += ["--step-ms", "1", "--old", "--old-steps", "3", "--captions", "5"]
    assert main([*args, "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    cases = {(r["storage"], r["reader"]) for r in results}
    assert cases == {("local", "new"), ("local", "old"), ("s3", "new"), ("s3", "old")}
    for r in results:
        for key in ("wait_fraction_median", "wait_fraction_p99", "read_over_used", "peak_rss_mib"):
            assert r[key] >= 0, (r["storage"], r["reader"], key)
        assert r["peak_rss_mib"] > 0 and r["read_over_used"] > 0
    new_local = next(r for r in results if r["storage"] == "local" and r["reader"] == "new")
    assert new_local["latent_kib"] == 128 and new_local["steps"] == 5
    # The new feed reads each row's bytes and little else.
    assert new_local["read_over_used"] < 1.5
    report = capsys.readouterr().out
    assert "wait/step median" in report and "S3 runs use the in-process moto server" in report

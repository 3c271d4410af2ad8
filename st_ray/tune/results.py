"""A campaign's results: the trial table (printed, CSV, JSON), the eval-loss plot and the
best trial's weights exported like a normal run's output."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from st_ray.train import checkpoints

TABLE_CSV = "results.csv"
TABLE_JSON = "results.json"
PLOT = "eval_loss.png"
BEST = "best"


def table(
    trials: dict[str, dict[str, Any]], *, mode: str, max_steps: int, uri_prefix: str
) -> list[dict[str, Any]]:
    """One row per trial, best first (trials without the metric last)."""
    rows = []
    for trial_id, record in trials.items():
        curve = record.get("curve") or []
        metric = curve[-1][1] if curve else None
        step = record.get("step") or 0
        status = record.get("status", "PENDING")
        checkpoint = record.get("checkpoint")
        rows.append(
            {
                "trial_id": trial_id,
                "status": status,
                "stopped_early": status == "TERMINATED" and step < max_steps,
                "steps": step,
                "metric": metric,
                "loss": record.get("loss"),
                "starts": record.get("starts", 0),
                "checkpoint": f"{uri_prefix}{checkpoint}" if checkpoint else None,
                "config": record.get("config", {}),
            }
        )
    sign = 1 if mode == "min" else -1

    def key(row: dict[str, Any]) -> tuple[bool, float]:
        value = row["metric"]
        missing = value is None or not math.isfinite(value)
        return missing, sign * value if not missing else 0.0

    return sorted(rows, key=key)


def format_table(rows: list[dict[str, Any]], metric: str) -> str:
    keys = sorted({k for r in rows for k in r["config"]})
    head = ["rank", "trial", "status", "steps", metric, *keys, "checkpoint"]
    body = []
    for i, r in enumerate(rows, 1):
        status = "STOPPED EARLY" if r["stopped_early"] else r["status"]
        value = f"{r['metric']:.5f}" if r["metric"] is not None else "-"
        config = [_short(r["config"].get(k)) for k in keys]
        body.append(
            [str(i), r["trial_id"], status, str(r["steps"]), value, *config, r["checkpoint"] or "-"]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        "  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) for row in [head, *body]
    ]
    return "\n".join(lines)


def write_table(rows: list[dict[str, Any]], folder: Path, metric: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r["config"]})
    csv_path = folder / TABLE_CSV
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "trial_id",
                "status",
                "stopped_early",
                "steps",
                metric,
                "loss",
                "starts",
                *keys,
                "checkpoint",
            ]
        )
        for r in rows:
            writer.writerow(
                [
                    r["trial_id"],
                    r["status"],
                    r["stopped_early"],
                    r["steps"],
                    r["metric"],
                    r["loss"],
                    r["starts"],
                    *[r["config"].get(k) for k in keys],
                    r["checkpoint"],
                ]
            )
    json_path = folder / TABLE_JSON
    json_path.write_text(json.dumps({"metric": metric, "trials": rows}, indent=2, default=str))
    return [csv_path, json_path]


def plot_curves(trials: dict[str, dict[str, Any]], path: Path, metric: str) -> Path:
    """The metric against steps, one line per trial (stopped trials end early)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for trial_id, record in sorted(trials.items()):
        curve = [(s, v) for s, v in record.get("curve") or [] if math.isfinite(v)]
        if curve:
            label = f"{trial_id} " + " ".join(
                f"{k}={_short(v)}" for k, v in sorted(record["config"].items())
            )
            ax.plot(*zip(*curve, strict=True), marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def export_best(checkpoint_path: str, filesystem: Any, out_dir: Path) -> list[str]:
    """Copy the weights of a checkpoint (its manifest's files, without the training state)
    into ``out_dir``: the layout of a training run's output_dir."""
    import tempfile

    import pyarrow.fs as pafs

    with tempfile.TemporaryDirectory(prefix="st_ray-best-") as tmp:
        pafs.copy_files(
            checkpoint_path,
            tmp,
            source_filesystem=filesystem or pafs.LocalFileSystem(),
            destination_filesystem=pafs.LocalFileSystem(),
        )
        manifest = checkpoints.read_manifest(Path(tmp))
        out_dir.mkdir(parents=True, exist_ok=True)
        copied = []
        for name in manifest["files"]:
            if name == checkpoints.STATE:
                continue
            source, target = Path(tmp) / name, out_dir / name
            if source.is_dir():
                import shutil

                shutil.copytree(source, target, dirs_exist_ok=True)
            else:
                target.write_bytes(source.read_bytes())
            copied.append(name)
    return copied


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)

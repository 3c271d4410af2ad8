"""What the benchmarks run on: synthetic captioned images, a SimpleTuner-style run config, a
local Ray session."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# A small vocabulary so captions repeat: at most len(_ADJECTIVES) * len(_NOUNS) distinct.
_ADJECTIVES = ("red", "blue", "green", "striped", "glowing", "tiny")
_NOUNS = ("cube", "sphere", "tower", "landscape")


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


@contextmanager
def ray_session(cpus: int | None) -> Iterator[None]:
    """Start one local Ray instance as st_ray's jobs start one (``cluster.init_settings``)
    unless one is already up (a test's, a caller's); Ray Data's progress bars are silenced so
    the table is readable."""
    import ray
    from ray.data import DataContext

    from st_ray.cluster import init_settings

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=cpus, **init_settings())
    context = DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.enable_progress_bars = bars
        if started:
            ray.shutdown()


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path

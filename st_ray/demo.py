"""The built-in example run: a tiny zoo model, generated images, and a SimpleTuner-style
config.json + multidatabackend.json that point at them. Everything is built locally."""

from __future__ import annotations

import json
from pathlib import Path

from st_ray import example_data, zoo
from st_ray.zoo import DEMO_FAMILY


def prepare(root: str | Path) -> Path:
    """Build (or reuse) the demo model and data under ``root``; return the config.json path."""
    root = Path(root).resolve()
    model_dir = zoo.ensure(DEMO_FAMILY, root / "models")
    data = example_data.generate(root / "data")
    config_dir = root / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    datasets = [
        {
            "id": "demo-images",
            "type": "local",
            "instance_data_dir": str(data.images_dir),
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel_area",
            "minimum_image_size": 32,
            "crop": False,
            "repeats": 0,
            "cache_dir_vae": str(root / "cache" / "vae" / "{model_family}" / "demo-images"),
        },
        {
            "id": "demo-text-embeds",
            "dataset_type": "text_embeds",
            "default": True,
            "type": "local",
            "cache_dir": str(root / "cache" / "text" / "{model_family}"),
        },
    ]
    config = {
        "model_family": DEMO_FAMILY,
        "model_type": "lora",
        "pretrained_model_name_or_path": str(model_dir),
        "output_dir": str(root / "output"),
        "data_backend_config": str(config_dir / "multidatabackend.json"),
        "resolution": 64,
        "resolution_type": "pixel_area",
        "train_batch_size": 2,
        "max_train_steps": 10,
        "learning_rate": 1e-4,
        "lora_rank": 4,
        "optimizer": "adamw_bf16",
        "mixed_precision": "no",
        "seed": 42,
        "checkpoint_step_interval": 5,
        "validation_prompt": "a red square on a blue background",
        "validation_step_interval": 5,
        "validation_resolution": "64",
        "validation_num_inference_steps": 2,
        "report_to": "mlflow",
        "tracker_project_name": "st_ray-demo",
        # Each demo run trains: a fresh run folder beside the earlier ones, never a resume
        # of a finished run.
        "resume_from_checkpoint": "none",
    }
    _write_json(config_dir / "multidatabackend.json", datasets)
    _write_json(config_dir / "config.json", config)
    return config_dir / "config.json"


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

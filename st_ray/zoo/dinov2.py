"""Tiny DINOv2 image encoder (facebook/dinov2-small layout), CREPA's visual encoder in tests.

Written with ``Dinov2Model.save_pretrained`` and the image processor's ``save_pretrained``
(``config.json``, ``model.safetensors``, ``preprocessor_config.json``), so the folder loads
through ``AutoModel`` like the real checkpoint. Patch size 8 at 64 px: an 8x8 grid of 32-wide
patch tokens after the CLS token. Weights are random and seeded.
"""

from __future__ import annotations

from pathlib import Path

from . import parts

IMAGE_SIZE = 64
PATCH_SIZE = 8


def model(seed: int):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=parts.HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    return parts.seeded(seed, "dinov2", lambda: Dinov2Model(config).eval())


def build(out_dir: Path, seed: int) -> None:
    # The PIL variant needs no torchvision; it saves as "BitImageProcessor" like the real repo.
    from transformers.models.bit import BitImageProcessorPil

    model(seed).save_pretrained(out_dir, safe_serialization=True)
    BitImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out_dir)

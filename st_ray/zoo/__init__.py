"""Offline tiny-model zoo: random tiny diffusion pipelines in the real checkpoints' layout.

Each family is written with the diffusers pipeline's own ``save_pretrained`` so the folder
(``model_index.json``, ``unet/`` or ``transformer/``, ``vae/``, ``text_encoder*/``,
``tokenizer*/``, ``scheduler/``) loads through the same ``from_pretrained`` calls as the
real checkpoint. Nothing is downloaded: tokenizers are generated from a built-in corpus.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from st_ray.models.family import FAMILIES as _MODEL_FAMILIES

# Every model family has a recipe: module ``<family>`` here (or the family's
# ``FamilySpec.zoo_recipe``) exposing ``build(out_dir: Path, seed: int) -> None``.
FAMILIES: tuple[str, ...] = tuple(_MODEL_FAMILIES)
# Helper models that are not diffusion pipelines (a transformers folder with config.json),
# built and cached the same way: "captioner" is a tiny BLIP image-to-text model, "clip" a
# tiny CLIP that scores validation images against their prompts (evaluation_type clip),
# "dinov2" a tiny DINOv2 image encoder (CREPA).
EXTRAS: tuple[str, ...] = ("captioner", "clip", "dinov2")
# The smallest, fastest family: what the built-in demo run and the benches use by default.
DEMO_FAMILY = "sd1x"
# The family whose real (full-size) architecture ``python -m st_ray.bench sizing`` counts.
SIZING_FAMILY = "sdxl"

__all__ = ["DEMO_FAMILY", "EXTRAS", "FAMILIES", "SIZING_FAMILY", "build", "ensure"]


@dataclass(frozen=True)
class Workload:
    """A family's real architecture on the meta device: one VAE encode and one denoiser
    forward for an image, to count their FLOPs."""

    denoiser: Any
    encode: Callable[[], Any]
    forward: Callable[[], Any]


def reference_workload(resolution: int) -> Workload:
    """``SIZING_FAMILY``'s real VAE encode and denoiser forward at ``resolution`` (its zoo
    recipe's ``reference_workload``)."""
    return _module(SIZING_FAMILY).reference_workload(resolution)


def _module(family: str):
    if family not in FAMILIES and family not in EXTRAS:
        raise ValueError(
            f"unknown zoo family {family!r}; accepted families: {', '.join(FAMILIES)}; "
            f"extra models: {', '.join(EXTRAS)}"
        )
    # Imported lazily: family modules pull in diffusers/transformers.
    if family in EXTRAS:
        return importlib.import_module(f"{__name__}.{family}")
    return importlib.import_module(_MODEL_FAMILIES[family].zoo_module)


def build(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny ``family`` pipeline into ``out_dir`` (the pipeline folder) and return it."""
    module = _module(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    module.build(out, seed)
    return out


# Bump when a recipe changes, so ``ensure`` never reuses a model built by an older recipe.
RECIPE_VERSION = 1


def _marker(family: str) -> str:
    """The file whose presence marks a finished build."""
    return "model_index.json" if family in FAMILIES else "config.json"


def ensure(family: str, cache_root: str | Path, seed: int = 0) -> Path:
    """Return ``cache_root/<family>-seed<seed>-v<RECIPE_VERSION>``, building it if missing.

    The build goes to a temporary sibling that is renamed into place only when complete, so
    a killed build is never mistaken for a finished one, and concurrent callers are safe:
    whoever renames first wins and the others discard their copy.
    """
    _module(family)  # validate the name before touching the filesystem
    root = Path(cache_root)
    final = root / f"{family}-seed{seed}-v{RECIPE_VERSION}"
    if (final / _marker(family)).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
    try:
        build(family, tmp, seed)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _marker(family)).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final

"""CLIP scores of validation images (evaluation_type 'clip'): how well each image matches
its prompt, by the CLIP model at pretrained_evaluation_model_name_or_path (a Hub id or a
local folder in CLIPModel's layout).

The score is torchmetrics' (and so SimpleTuner's) definition: 100 x the cosine similarity of
the image and text embeddings, floored at 0. Metrics, per validation: ``clip/<prompt name>``
(the mean over that prompt's images and resolutions) and, over the prompts, ``clip/mean``,
``clip/min``, ``clip/max`` and ``clip/std`` (SimpleTuner's names). The unconditional image
(empty prompt) has nothing to match and is not scored.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "openai/clip-vit-large-patch14-336"


def is_enabled(options: Mapping[str, Any]) -> bool:
    return str(options.get("evaluation_type") or "none").lower() == "clip"


class ClipScorer:
    """A CLIP model and its processor, loaded once, scoring (image, prompt) pairs."""

    def __init__(self, model_path: str, device: Any = "cpu") -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.device = torch.device(device)
        try:
            self.model = CLIPModel.from_pretrained(model_path).eval().to(self.device)
            self.processor = CLIPProcessor.from_pretrained(model_path)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"pretrained_evaluation_model_name_or_path: cannot load a CLIP model from "
                f"{model_path!r} ({err}); give a Hub id or a folder with CLIPModel's config.json, "
                "weights and processor files"
            ) from err

    @classmethod
    def from_options(cls, options: Mapping[str, Any], device: Any = "cpu") -> ClipScorer | None:
        if not is_enabled(options):
            return None
        path = options.get("pretrained_evaluation_model_name_or_path") or DEFAULT_MODEL
        return cls(str(path), device)

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        """The CLIP score of each (PIL image, prompt) pair."""
        import torch

        if not images:
            return []
        with torch.no_grad():
            batch = self.processor(
                text=list(prompts),
                images=list(images),
                return_tensors="pt",
                padding=True,
                truncation=True,
            ).to(self.device)
            out = self.model(**batch)
            image = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
            text = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
            cosine = (image * text).sum(dim=-1)
        return [float(v) for v in (100 * cosine).clamp(min=0)]

    def score_files(
        self, paths: Sequence[Path], prompts: Sequence[tuple[str, str]]
    ) -> dict[str, float]:
        """Metrics for one validation's images; ``prompts`` are the (name, prompt) pairs the
        files were rendered from (``<name>-<W>x<H>-<i>[-<suffix>].png``). Images rendered with
        a suffix (the EMA pass) are scored as ``clip/<suffix>/...`` beside the trained ones."""
        from PIL import Image

        groups: dict[str, list[tuple[str, Path]]] = {}
        for name, prompt in prompts:
            if not prompt:
                continue
            pattern = re.compile(rf"{re.escape(name)}-\d+x\d+-\d+(?:-(?P<suffix>[\w.]+))?\.png")
            for path in paths:
                match = pattern.fullmatch(Path(path).name)
                if match:
                    key = f"{match['suffix']}/{name}" if match["suffix"] else name
                    groups.setdefault(key, []).append((prompt, Path(path)))
        per_prompt: dict[str, float] = {}
        for key, items in groups.items():
            images = [Image.open(p).convert("RGB") for _, p in items]
            scores = self.score(images, [prompt for prompt, _ in items])
            per_prompt[key] = statistics.fmean(scores)
        return summarise(per_prompt)


def summarise(per_prompt: Mapping[str, float]) -> dict[str, float]:
    """``clip/<name>`` for each prompt and clip/mean|min|max|std over them (per prefix, e.g.
    ``clip/ema/mean`` for the EMA pass)."""
    metrics = {f"clip/{k}": v for k, v in per_prompt.items()}
    by_prefix: dict[str, list[float]] = {}
    for key, value in per_prompt.items():
        prefix = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        by_prefix.setdefault(prefix, []).append(value)
    for prefix, values in by_prefix.items():
        metrics[f"clip/{prefix}mean"] = statistics.fmean(values)
        metrics[f"clip/{prefix}min"] = min(values)
        metrics[f"clip/{prefix}max"] = max(values)
        metrics[f"clip/{prefix}std"] = statistics.pstdev(values)
    return metrics

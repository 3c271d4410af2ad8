"""Tiny CLIP scorer (openai/clip-vit-large-patch14 layout) for evaluation_type 'clip'.

Written with ``save_pretrained`` of ``CLIPModel`` and ``CLIPProcessor``, so the folder loads
through ``CLIPModel.from_pretrained`` / ``CLIPProcessor.from_pretrained`` like the real
checkpoint. The tokenizer is the zoo's generated CLIP BPE. A random CLIP scores every prompt
alike, so the recipe fits the weights briefly (seeded, deterministic, about a second on a CPU)
to one thing a real CLIP knows: which colour word matches a mostly single-coloured picture.
Then a prompt-matched image scores above a mismatched one, as with the real model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import parts

IMAGE_SIZE = 32  # 4x4 patches of 8 px
# Colour words of the zoo corpus with the RGB a picture of that colour has.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 30),
    "purple": (130, 40, 170),
    "orange": (240, 140, 20),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
}
SUBJECTS = ("photo", "painting", "car", "flower", "house", "dog", "sky", "cup")
FIT_STEPS = 60


def colour_image(rgb: tuple[int, int, int], seed: int, size: int = IMAGE_SIZE):
    """A PIL picture mostly of one colour, with some noise (what the fit is trained on)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb)[None, None] + rng.normal(0, 25, (size, size, 3)), 0, 255)
    return Image.fromarray(pixels.astype("uint8"), "RGB")


def processor():
    from transformers import CLIPProcessor
    from transformers.models.clip import CLIPImageProcessorPil

    # The PIL variant needs no torchvision; it saves as "CLIPImageProcessor" like the real repo.
    images = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return CLIPProcessor(image_processor=images, tokenizer=parts.clip_tokenizer())


def model(seed: int):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = parts.clip_text_encoder(seed, "clip-score-text").config.to_dict()
    config = CLIPConfig(
        text_config=CLIPTextConfig(**text),
        vision_config=CLIPVisionConfig(
            hidden_size=parts.HIDDEN,
            intermediate_size=parts.HIDDEN * 2,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=8,
            projection_dim=parts.HIDDEN,
        ),
        projection_dim=parts.HIDDEN,
    )
    return parts.seeded(seed, "clip-score", lambda: CLIPModel(config))


def fit(clip, proc, seed: int, steps: int = FIT_STEPS) -> None:
    """Contrastive fit on (colour picture, '<colour> <subject>') pairs, in place."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(clip.parameters(), lr=3e-3)
    clip.train()
    threads = torch.get_num_threads()
    # One thread: a model this small trains faster without intra-op parallelism (much
    # faster on a busy machine, where spinning threads wait for each other).
    torch.set_num_threads(1)
    try:
        _steps(clip, proc, optimizer, gen, seed, steps)
    finally:
        torch.set_num_threads(threads)
    clip.eval()


def _steps(clip, proc, optimizer, gen: torch.Generator, seed: int, steps: int) -> None:
    names = list(COLOURS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            order = torch.randperm(len(names), generator=gen).tolist()
            subjects = torch.randint(len(SUBJECTS), (len(names),), generator=gen).tolist()
            prompts = [f"a {names[i]} {SUBJECTS[s]}" for i, s in zip(order, subjects, strict=True)]
            images = [colour_image(COLOURS[names[i]], seed * 10_000 + step * 97 + i) for i in order]
            batch = proc(text=prompts, images=images, return_tensors="pt", padding=True)
            out = clip(**batch, return_loss=True)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()


def build(out_dir: Path, seed: int) -> None:
    proc = processor()
    clip = model(seed)
    fit(clip, proc, seed)
    out_dir = Path(out_dir)
    clip.save_pretrained(out_dir, safe_serialization=True)
    proc.save_pretrained(out_dir)

"""Model captioning: caption the images a dataset's caption_strategy leaves without a caption.

``ModelCaptioner`` is a Ray Data actor class (``map_batches(ModelCaptioner, fn_constructor_kwargs
=...)``): it loads a transformers image-to-text model once (``AutoProcessor`` +
``AutoModelForImageTextToText``: BLIP, GIT, vision-encoder-decoder...) and adds a
``generated_caption`` column to each batch. Decoding is greedy, so a rerun gives the same text.

Generated captions are saved so later runs reuse them instead of captioning again:
``write_generated_captions`` writes ``<image>.txt`` sidecars next to local images (what
caption_strategy 'textfile' reads) or rows of a parquet table, and never replaces an existing
caption. ``needs_captioning`` decides which images go to the model.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CAPTION_OUTPUTS = ("sidecar", "parquet")
# Default file name for caption_output 'parquet'; the caller picks its folder.
GENERATED_CAPTIONS_FILE = "generated_captions.parquet"
# Columns of that table.
ID_COLUMN = "image_id"
CAPTION_COLUMN = "generated_caption"


def needs_captioning(captions: Sequence[str], existing_generated: str | None) -> bool:
    """True when an image has no caption from its strategy and no saved generated caption.

    existing_generated: the image's saved generated caption: for caption_output 'sidecar' the
    text of the .txt beside it (None when there is no such file), for 'parquet' its row in
    the generated-captions table (None when absent). An existing but empty .txt counts as
    present: it is never overwritten, so captioning the image again would be wasted work.
    """
    return not captions and existing_generated is None


def clean_caption(text: str, prompt: str | None = None) -> str:
    """One line of text: whitespace collapsed, and the prompt removed when the model echoes it.

    Decoder-only models (GIT) and BLIP return the prompt followed by the continuation.
    """
    text = " ".join(text.split())
    lead = " ".join((prompt or "").split())
    if lead and text.lower().startswith(lead.lower()):
        text = text[len(lead) :].strip()
    return text


class ModelCaptioner:
    """Ray Data actor: loads the captioning model once, captions each batch.

    The batch needs a ``pixels`` column of uint8 HxWx3 RGB arrays (what the decode stage
    produces); without one, an ``image_bytes`` column of encoded image files is decoded
    instead. Every input column is passed through and ``generated_caption`` (str) is added.
    """

    def __init__(
        self,
        model_path: str,
        prompt: str | None = None,
        max_new_tokens: int = 32,
        device: str = "cpu",
        dtype: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if device == "auto":
            from st_ray.device import pick_device

            device = str(pick_device())
        self.device = torch.device(device)
        # fp32 on CPU; bf16 on GPU halves memory and is how captioners are usually served.
        name = dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
        self.dtype = getattr(torch, name)
        self.prompt = prompt or None
        self.max_new_tokens = int(max_new_tokens)
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=self.dtype)
        self.model.to(self.device).eval()

    def caption(self, images: Sequence[Any]) -> list[str]:
        """Captions for PIL images or uint8 HxWx3 arrays, in order."""
        import torch
        from PIL import Image

        if not images:
            return []
        pil = [im if isinstance(im, Image.Image) else Image.fromarray(_rgb(im)) for im in images]
        text = [self.prompt] * len(pil) if self.prompt else None
        inputs = self.processor(images=pil, text=text, return_tensors="pt")
        inputs = {
            k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens
            )
        decoded = self.processor.batch_decode(out, skip_special_tokens=True)
        return [clean_caption(t, self.prompt) for t in decoded]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "pixels" in batch:
            images = list(batch["pixels"])
        else:
            from PIL import Image

            images = [Image.open(io.BytesIO(bytes(b))).convert("RGB") for b in batch["image_bytes"]]
        captions = self.caption(images)
        return {**batch, CAPTION_COLUMN: np.array(captions, dtype=object)}


def _rgb(pixels: Any) -> np.ndarray:
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        array = array.astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return array[..., :3]


# ------------------------------------------------------------------------- saving captions


@dataclass(frozen=True)
class WriteReport:
    """Image ids by outcome of ``write_generated_captions``."""

    written: tuple[str, ...]
    kept_existing: tuple[str, ...]  # a caption was already there: left untouched
    empty: tuple[str, ...]  # the model produced nothing usable: nothing written


def sidecar_path(uri: str) -> Path:
    """The .txt beside a local image, named as SimpleTuner's textfile strategy expects."""
    path = uri.removeprefix("file://")
    if "://" in path:
        raise ValueError(
            f"caption_output 'sidecar' writes next to local images only, not {uri!r}; "
            "use caption_output 'parquet'"
        )
    return Path(os.path.splitext(path)[0] + ".txt")


def write_generated_captions(
    rows: Iterable[Mapping[str, Any]],
    caption_output: str = "sidecar",
    parquet_path: str | Path | None = None,
) -> WriteReport:
    """Save generated captions without overwriting any caption already saved.

    rows: mappings with ``image_id``, ``uri`` (local image path, for 'sidecar') and
    ``generated_caption``.
    caption_output 'sidecar': ``<image stem>.txt`` next to each image, created only if absent.
    caption_output 'parquet': rows added to the table at ``parquet_path`` (created if needed);
    ids already in it keep their caption.
    """
    if caption_output not in CAPTION_OUTPUTS:
        raise ValueError(f"caption_output must be one of {CAPTION_OUTPUTS}, got {caption_output!r}")
    written: list[str] = []
    kept: list[str] = []
    empty: list[str] = []
    new: dict[str, str] = {}
    existing = read_generated_captions(parquet_path) if caption_output == "parquet" else {}
    for row in rows:
        image_id = str(row[ID_COLUMN])
        caption = clean_caption(str(row.get(CAPTION_COLUMN) or ""))
        if not caption:
            empty.append(image_id)
        elif caption_output == "sidecar":
            created = _create_text_file(sidecar_path(str(row["uri"])), caption)
            (written if created else kept).append(image_id)
        elif image_id in existing or image_id in new:
            kept.append(image_id)
        else:
            new[image_id] = caption
            written.append(image_id)
    if new:
        if parquet_path is None:
            raise ValueError("caption_output 'parquet' needs parquet_path")
        _write_table(Path(parquet_path), {**existing, **new})
    return WriteReport(tuple(written), tuple(kept), tuple(empty))


def read_generated_captions(parquet_path: str | Path | None) -> dict[str, str]:
    """image_id -> generated caption from a caption_output 'parquet' table ({} if absent)."""
    if parquet_path is None or not Path(parquet_path).is_file():
        return {}
    import pyarrow.parquet as pq

    table = pq.read_table(parquet_path, columns=[ID_COLUMN, CAPTION_COLUMN])
    ids, captions = (table.column(c).to_pylist() for c in (ID_COLUMN, CAPTION_COLUMN))
    return {str(i): str(c) for i, c in zip(ids, captions, strict=True) if c is not None}


def _create_text_file(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` only if no file is there; False if one already was.

    The text goes to a temporary file that is hard-linked into place: the link fails if the
    name exists (no overwrite, even racing another writer) and a reader never sees half a file.
    No trailing newline: SimpleTuner would read one as a second (empty) caption line.
    """
    if path.exists():
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # filesystems without hard links: exclusive create instead
            try:
                with open(path, "x", encoding="utf-8") as handle:
                    handle.write(text)
            except FileExistsError:
                return False
        return True
    finally:
        os.unlink(tmp)


def _write_table(path: Path, captions: Mapping[str, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = sorted(captions)
    table = pa.table(
        {ID_COLUMN: ids, CAPTION_COLUMN: [captions[i] for i in ids]},
        schema=pa.schema([(ID_COLUMN, pa.string()), (CAPTION_COLUMN, pa.string())]),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # readers see the old table or the new one, never a partial file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

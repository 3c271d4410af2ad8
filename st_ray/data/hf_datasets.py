"""Discovery of Hugging Face ``datasets`` already on disk: rows are ``hf://`` URIs (folder,
split, image column, row index), read back cell by cell."""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from st_ray.config.datasets import DatasetEntry, resolve_local
from st_ray.data.discovery_rows import (
    DatasetNotFoundError,
    DiscoveryError,
    integer_value,
    make_row,
    text_value,
)

HF_SCHEME = "hf"


@dataclass(frozen=True)
class _HubColumns:
    split: str
    image: str
    caption: str | None
    fallback: str | None
    width: str | None
    height: str | None
    file_extension: str


def _hub_columns(entry: DatasetEntry) -> _HubColumns:
    """Split and image column: the top-level field wins when set to a non-default value;
    caption columns: the huggingface block wins (as in SimpleTuner's code)."""
    block = entry["huggingface"] or {}
    top = entry.fields

    def pick(name: str, default: Any) -> Any:
        if top.get(name) not in (None, default):
            return top[name]
        return block.get(name) or top.get(name) or default

    def pick_block(name: str, default: Any) -> Any:
        if block.get(name) not in (None, default):
            return block[name]
        return top.get(name) or default

    return _HubColumns(
        split=pick("split", "train"),
        image=pick("image_column", "image"),
        caption=pick_block("caption_column", "caption"),
        fallback=pick_block("fallback_caption_column", None),
        width=block.get("width_column"),
        height=block.get("height_column"),
        file_extension=str(block.get("file_extension") or "jpg").lstrip("."),
    )


def huggingface_rows(entry: DatasetEntry, base_dir: Path | None) -> list[dict[str, Any]]:
    block = entry["huggingface"] or {}
    name = entry["dataset_name"] or block.get("dataset_name")
    if not name:
        raise DiscoveryError(f"dataset '{entry.id}': 'dataset_name' is required")
    folder = os.path.abspath(resolve_local(str(name), base_dir))
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(
            f"dataset '{entry.id}': Hugging Face dataset '{name}' is not a folder on disk "
            f"({folder}). st_ray does not download datasets: save it with "
            "Dataset.save_to_disk (or download the repository) and set dataset_name to the folder"
        )
    cols = _hub_columns(entry)
    try:
        dataset = _load_hf(folder, cols.split)
    except DiscoveryError as err:
        raise DiscoveryError(f"dataset '{entry.id}': {err}") from err
    except Exception as err:
        raise DiscoveryError(f"dataset '{entry.id}': cannot load {folder}: {err}") from err
    present = set(dataset.column_names)
    if cols.image not in present:
        raise DiscoveryError(
            f"dataset '{entry.id}': image column '{cols.image}' is not in {folder} "
            f"(columns: {', '.join(sorted(present))})"
        )
    wanted = [c for c in (cols.caption, cols.fallback, cols.width, cols.height) if c]
    tops = sorted({c.split(".")[0] for c in wanted} & present)
    # Only the metadata columns are read here; image bytes stay on disk until needed.
    table = dataset.select_columns(tops).to_dict() if tops else {}

    def cell(column: str | None, index: int) -> Any:
        if not column or column.split(".")[0] not in table:
            return None
        head, *rest = column.split(".")
        value = table[head][index]
        for part in rest:
            value = value.get(part) if isinstance(value, Mapping) else None
        return value

    query = urlencode({"split": cols.split, "column": cols.image})
    base = f"{HF_SCHEME}://{quote(folder)}?{query}"
    return [
        make_row(
            entry.id,
            f"{index}.{cols.file_extension}",
            f"{base}#{index}",
            meta_caption=text_value(cell(cols.caption, index)),
            meta_fallback_caption=text_value(cell(cols.fallback, index)),
            meta_width=integer_value(cell(cols.width, index)),
            meta_height=integer_value(cell(cols.height, index)),
        )
        for index in range(len(dataset))
    ]


def _load_hf(folder: str, split: str) -> Any:
    """A saved dataset (``save_to_disk``) or a local folder ``load_dataset`` understands
    (parquet/CSV/JSON files, an image folder, a downloaded Hub repository)."""
    import datasets

    markers = ("dataset_dict.json", "state.json")
    if not any(os.path.exists(os.path.join(folder, m)) for m in markers):
        return datasets.load_dataset(folder, split=split)
    loaded = datasets.load_from_disk(folder)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DiscoveryError(
                f"split '{split}' is not in {folder} (splits: {', '.join(loaded)})"
            )
        return loaded[split]
    return loaded


@functools.lru_cache(maxsize=8)
def _hf_image_column(folder: str, split: str, column: str) -> Any:
    """The dataset reduced to its image column, with images left undecoded (raw bytes)."""
    import datasets

    dataset = _load_hf(folder, split).select_columns([column])
    if isinstance(dataset.features[column], datasets.Image):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def parse_hf_uri(uri: str) -> tuple[str, str, str, int]:
    """(folder, split, image column, row index) of an ``hf://`` row URI."""
    parts = urlsplit(uri)
    if parts.scheme != HF_SCHEME or not parts.fragment.isdigit():
        raise ValueError(f"not an hf://<folder>?split=..&column=..#<index> URI: {uri!r}")
    query = parse_qs(parts.query)
    folder = unquote(parts.netloc + parts.path)
    return folder, query["split"][0], query["column"][0], int(parts.fragment)


def hf_image_bytes(folder: str, split: str, column: str, index: int) -> bytes:
    value = _hf_image_column(folder, split, column)[index][column]
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str) and value:
        path = value if os.path.isabs(value) else os.path.join(folder, value)
        with open(path, "rb") as handle:
            return handle.read()
    if hasattr(value, "save"):  # a decoded PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    raise DiscoveryError(f"{folder} row {index}: column '{column}' holds no image ({value!r})")

"""Loading and validating multidatabackend.json: the list of datasets a run trains on.

Entries are checked field by field against ``dataset_fields`` (types, choices, unknown keys),
then as a whole (unique ids, a text-embed cache, backend-specific required fields, local
folders that exist). Fields an entry leaves out inherit the run-wide option of the same name
when that option is marked ``dataset_field`` (``resolution``, ``caption_strategy``...), as in
SimpleTuner; cache locations get a folder per dataset instead (see ``_default_caches``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from st_ray.config.conditioning_checks import CONDITIONING, check_links
from st_ray.config.dataset_fields import FIELDS, HUGGINGFACE_FIELDS, PARQUET_FIELDS, VIDEO_FIELDS
from st_ray.config.errors import ProblemList, unknown_key_message
from st_ray.config.schema import Option, Support
from st_ray.config.sources import read_json
from st_ray.config.values import coerce, expand_placeholders, safe_error

FIELD_BY_NAME: dict[str, Option] = {}
for _field in FIELDS:
    for _key in (_field.name, *_field.aliases):
        FIELD_BY_NAME[_key] = _field
NESTED_BLOCKS: dict[str, list[Option]] = {
    "parquet": PARQUET_FIELDS,
    "huggingface": HUGGINGFACE_FIELDS,
    "video": VIDEO_FIELDS,
}


@dataclass(frozen=True)
class DatasetEntry:
    """One validated dataset: every declared field typed, defaults and inherited values filled."""

    id: str
    dataset_type: str
    backend: str
    fields: dict[str, Any]
    index: int  # position in the file, for messages

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    @property
    def is_image(self) -> bool:
        """Training samples: images, or video clips (cached and trained on the same way)."""
        return self.dataset_type in ("image", "video")

    @property
    def is_video(self) -> bool:
        return self.dataset_type == "video"

    @property
    def holds_images(self) -> bool:
        """Files to cache: training images or clips, or eval images (never trained on)."""
        return self.dataset_type in ("image", "video", "eval")


def load_datasets(
    path_or_entries: Path | list[Any],
    run_options: Mapping[str, Any],
    env: Mapping[str, str],
    problems: ProblemList,
    base_dir: Path | None = None,
    source_name: Path | None = None,
) -> list[DatasetEntry]:
    """Every enabled dataset of a multidatabackend.json path (or of an inline list);
    problems are added to ``problems``."""
    if isinstance(path_or_entries, list):
        data: Any = path_or_entries
        source = str(source_name or "data_backend_config")
    else:
        source = str(path_or_entries)
        data = read_json(path_or_entries, "dataset config")
    if not isinstance(data, list):
        problems.add(
            source, None, f"expected a JSON list of dataset objects, found a {type(data).__name__}"
        )
        return []
    names = {"model_family": str(run_options.get("model_family"))}
    entries: list[DatasetEntry] = []
    before = len(problems.items)
    for index, raw in enumerate(data):
        where = f"{source} [entry {index}]"
        if not isinstance(raw, dict):
            problems.add(where, None, f"expected an object, found {type(raw).__name__}")
            continue
        entry = _load_entry(raw, index, where, run_options, env, names, problems)
        if entry is not None:
            entries.append(entry)
    enabled = [e for e in entries if not e.fields.get("disabled")]
    all_loaded = len(problems.items) == before
    _check_collection(enabled, entries, source, problems, base_dir, all_loaded)
    return enabled


def _load_entry(
    raw: dict[str, Any],
    index: int,
    where: str,
    run_options: Mapping[str, Any],
    env: Mapping[str, str],
    names: Mapping[str, str],
    problems: ProblemList,
) -> DatasetEntry | None:
    fields: dict[str, Any] = {}
    ok = True
    for key, value in raw.items():
        option = FIELD_BY_NAME.get(key)
        if key == "skip_file_discovery" and value is False:
            value = ""  # SimpleTuner's configs write false for "skip nothing"
        if option is None:
            problems.add(where, key, unknown_key_message(key, FIELD_BY_NAME, "dataset field"))
            ok = False
            continue
        try:
            typed = coerce(option, expand_placeholders(value, env, names))
        except ValueError as err:
            problems.add(where, key, safe_error(option, key, err))
            ok = False
            continue
        if option.name in NESTED_BLOCKS and typed is not None:
            typed = _load_block(option.name, typed, where, problems)
        fields[option.name] = typed
        ok &= _check_support(option, typed, _inherited(option, run_options), where, problems)
    if fields.get("type") == "huggingface" and fields.get("caption_strategy") is None:
        # A Hub dataset captions from its own columns, not the run-wide strategy (as
        # SimpleTuner's data backend factory does).
        fields["caption_strategy"] = "huggingface"
    for option in FIELDS:
        if fields.get(option.name) is None:
            fields[option.name] = _inherited(option, run_options)
    if fields.get("caption_strategy") == "instance_prompt":
        fields["caption_strategy"] = "instanceprompt"  # the dataset-field spelling
    _default_caches(fields, run_options)
    if not fields.get("id"):
        problems.add(where, "id", "every dataset needs a unique 'id'")
        return None
    if not ok:
        return None
    return DatasetEntry(
        id=str(fields["id"]),
        dataset_type=fields["dataset_type"],
        backend=fields["type"],
        fields=fields,
        index=index,
    )


def _default_caches(fields: dict[str, Any], run_options: Mapping[str, Any]) -> None:
    """Image datasets without cache_dir_vae get their own folder under the run-wide VAE cache
    (or <output_dir>/cache/vae/<family>); text-embed datasets default to cache_dir_text."""
    if fields.get("dataset_type") == "text_embeds":
        if not fields.get("cache_dir"):
            fields["cache_dir"] = run_options.get("cache_dir_text")
    elif not fields.get("cache_dir_vae") and fields.get("id"):
        root = run_options.get("cache_dir_vae") or str(
            Path(str(run_options.get("output_dir")))
            / "cache"
            / "vae"
            / str(run_options.get("model_family"))
        )
        fields["cache_dir_vae"] = str(Path(root) / str(fields["id"]))


def _load_block(name: str, value: Any, where: str, problems: ProblemList) -> dict[str, Any]:
    if not isinstance(value, dict):
        problems.add(where, name, f"expected an object of {name} settings, found {value!r}")
        return {}
    declared = {o.name: o for o in NESTED_BLOCKS[name]}
    block: dict[str, Any] = {o.name: o.default for o in NESTED_BLOCKS[name]}
    for key, raw in value.items():
        option = declared.get(key)
        if option is None:
            problems.add(
                where, f"{name}.{key}", unknown_key_message(key, declared, f"{name} field")
            )
            continue
        try:
            block[key] = coerce(option, raw)
        except ValueError as err:
            problems.add(where, f"{name}.{key}", safe_error(option, key, err))
            continue
        _check_support(option, block[key], option.default, f"{where} {name} block", problems)
    return block


def _inherited(option: Option, run_options: Mapping[str, Any]) -> Any:
    """The value of a field an entry leaves out: the run-wide option's for an inheriting
    field (its default when the run does not say), else the field's default."""
    if option.dataset_field and run_options.get(option.name) is not None:
        return run_options[option.name]
    return option.default


def _check_support(
    option: Option, value: Any, baseline: Any, where: str, problems: ProblemList
) -> bool:
    """An explicit value is fine if it changes nothing (the inherited or default value)."""
    if value in (None, "", []) or value == baseline:
        return True
    if option.no_effect:
        problems.note(f"{where}: {option.name} has no effect in st_ray: {option.no_effect}")
        return True
    if option.support is Support.NO:
        problems.add(where, option.name, f"is not supported by st_ray yet ({option.note})")
        return False
    for bad, reason in option.unsupported_values:
        if value == bad:
            problems.add(
                where, option.name, f"value {bad!r} is not supported by st_ray yet ({reason})"
            )
            return False
    return True


def _check_collection(
    enabled: list[DatasetEntry],
    every: list[DatasetEntry],
    source: str,
    problems: ProblemList,
    base_dir: Path | None,
    all_loaded: bool,
) -> None:
    seen: dict[str, int] = {}
    for entry in every:
        if entry.id in seen:
            problems.add(
                f"{source} [entry {entry.index}]",
                "id",
                f"duplicate dataset id '{entry.id}' (also used by entry {seen[entry.id]})",
            )
        seen.setdefault(entry.id, entry.index)
    images = [e for e in enabled if e.is_image]
    text_embeds = [e for e in enabled if e.dataset_type == "text_embeds"]
    if not images and all_loaded:  # entries dropped for errors are already reported
        problems.add(
            source,
            None,
            "no enabled image dataset; add an entry with "
            '"dataset_type": "image" (the default) or remove "disabled": true',
        )
    defaults = [e.id for e in text_embeds if e.fields.get("default")]
    if len(text_embeds) > 1 and len(defaults) != 1:
        problems.add(
            source,
            "default",
            f"{len(text_embeds)} text_embeds datasets and "
            f'{len(defaults)} marked "default": true; mark exactly one as default',
        )
    text_ids = {e.id for e in text_embeds}
    for entry in text_embeds:
        if entry.backend == "aws" and not entry.fields.get("aws_bucket_name"):
            problems.add(
                f"{source} [entry {entry.index}] (id '{entry.id}')",
                "aws_bucket_name",
                "is required for an 'aws' (S3) text_embeds cache",
            )
    for entry in [e for e in enabled if e.holds_images]:
        where = f"{source} [entry {entry.index}] (id '{entry.id}')"
        wanted = entry.fields.get("text_embeds")
        if wanted and wanted not in text_ids:
            problems.add(
                where,
                "text_embeds",
                f"names '{wanted}', which is not an enabled "
                "text_embeds dataset; known: " + (", ".join(sorted(text_ids)) or "none"),
            )
        _check_backend(entry, where, problems, base_dir)
        _check_resolution(entry, where, problems)
    for entry in [e for e in enabled if e.dataset_type == CONDITIONING]:
        # Captions and sizes come from the paired image: only the storage is checked.
        where = f"{source} [entry {entry.index}] (id '{entry.id}')"
        _check_backend(entry, where, problems, base_dir, captions=False)
    check_links(enabled, source, problems)


def _check_backend(
    entry: DatasetEntry,
    where: str,
    problems: ProblemList,
    base_dir: Path | None,
    captions: bool = True,
) -> None:
    f = entry.fields
    if entry.backend == "local":
        folder = f.get("instance_data_dir")
        if not folder:
            problems.add(
                where,
                "instance_data_dir",
                "is required for a local dataset: the folder holding its images",
            )
        elif not resolve_local(folder, base_dir).is_dir():
            problems.add(where, "instance_data_dir", f"folder '{folder}' does not exist")
    elif entry.backend == "aws":
        if not f.get("aws_bucket_name"):
            problems.add(where, "aws_bucket_name", "is required for an 'aws' (S3) dataset")
    elif entry.backend == "csv":
        csv_file = f.get("csv_file")
        if not csv_file:
            problems.add(where, "csv_file", "is required for a 'csv' dataset")
        elif "://" not in str(csv_file) and not resolve_local(csv_file, base_dir).is_file():
            problems.add(where, "csv_file", f"file '{csv_file}' does not exist")
    elif entry.backend == "huggingface":
        block = f.get("huggingface") or {}
        if not (f.get("dataset_name") or block.get("dataset_name")):
            problems.add(where, "dataset_name", "is required for a 'huggingface' dataset")
    if f.get("metadata_backend") == "parquet":
        block = f.get("parquet") or {}
        if not block.get("path"):
            problems.add(
                where, "parquet.path", 'a parquet metadata backend needs "parquet": {"path": ...}'
            )
        elif (
            entry.backend == "local"
            and not str(block["path"]).startswith("s3://")
            and not resolve_local(block["path"], base_dir).is_file()
            and not (Path(str(f.get("instance_data_dir") or "")) / block["path"]).is_file()
        ):
            problems.add(where, "parquet.path", f"file '{block['path']}' does not exist")
    if captions:
        _check_captions(entry, where, problems)


def _check_captions(entry: DatasetEntry, where: str, problems: ProblemList) -> None:
    f = entry.fields
    strategy = f.get("caption_strategy")
    if strategy == "instanceprompt" and not f.get("instance_prompt"):
        problems.add(
            where,
            "instance_prompt",
            "caption_strategy 'instanceprompt' needs an "
            "instance_prompt (in the dataset entry or run-wide)",
        )
    if strategy == "huggingface" and entry.backend != "huggingface":
        problems.add(
            where,
            "caption_strategy",
            "'huggingface' captions come from a Hub dataset's columns; they need "
            '"type": "huggingface"',
        )
    if strategy == "parquet" and f.get("metadata_backend") != "parquet":
        problems.add(
            where,
            "caption_strategy",
            "'parquet' captions need \"metadata_backend\": "
            '"parquet" and a "parquet" block naming the table',
        )


def _check_resolution(entry: DatasetEntry, where: str, problems: ProblemList) -> None:
    resolution, kind = entry.fields.get("resolution"), entry.fields.get("resolution_type")
    if resolution is None:
        return
    if kind == "area" and resolution > 16:
        problems.add(
            where,
            "resolution",
            f"{resolution} with resolution_type 'area' means "
            f"{resolution} megapixels; give megapixels (e.g. 1.0) or use "
            "resolution_type 'pixel_area' for an edge length in pixels",
        )
    if kind in ("pixel", "pixel_area") and resolution < 64:
        problems.add(
            where,
            "resolution",
            f"{resolution} pixels is too small for resolution_type "
            f"'{kind}' (an edge length in pixels, e.g. 1024); for megapixels use "
            "resolution_type 'area'",
        )
    low, high = entry.fields.get("minimum_image_size"), entry.fields.get("maximum_image_size")
    if low and high and low > high:
        problems.add(where, "minimum_image_size", f"{low} is larger than maximum_image_size {high}")


def resolve_local(path: str | Path, base_dir: Path | None) -> Path:
    """A relative path is taken from the working directory, else from the config's folder."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists() or base_dir is None:
        return candidate
    return base_dir / candidate

"""Caption strategies: where each image's caption(s) come from, as in SimpleTuner.

Pure functions over values the discovery stage already read (the sidecar's text, the metadata
row's caption columns); nothing here touches storage except ``load_caption_filters`` reading a
filter file once. An image gets a list of captions: several when its .txt has several lines or
its metadata cell holds a list; ``[]`` when it has none (the caller records "missing_caption").

Semantics follow SimpleTuner's ``simpletuner/helpers/prompts.py`` (PromptHandler) and the
caption fields of ``documentation/DATALOADER.md``:

- ``filename``: the file stem with underscores turned into spaces ("a_red_cat.jpg" ->
  "a red cat"); SimpleTuner does no other clean-up.
- ``textfile``: the sidecar .txt, one caption per non-empty line unless
  ``disable_multiline_split``.
- ``instanceprompt`` (the run-wide option spells it ``instance_prompt``): ``instance_prompt``
  for every image.
- ``parquet`` / ``csv`` / ``huggingface``: the metadata caption (a string or a list of strings),
  else the fallback caption column when the caption is null or empty.
- ``only_instance_prompt`` replaces whatever the strategy found by ``instance_prompt``;
  ``prepend_instance_prompt`` puts ``"<instance_prompt> "`` in front of every caption.
- ``caption_shuffle`` adds tag-shuffled variants of every caption (before the instance prompt
  is prepended): see ``shuffled_variants``. Each variant is a caption of its own, so it gets its
  own text embedding (cached by the caption's text) and training picks among them.
- ``caption_filter_list`` (set on the text-embeds dataset in SimpleTuner, applied to the final
  prompt just before encoding): see ``apply_caption_filters``.

No caption dropout here: that is a training-time decision.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

STRATEGIES: tuple[str, ...] = (
    "filename",
    "textfile",
    "instanceprompt",
    "parquet",
    "csv",
    "huggingface",
)
# The run-wide --caption_strategy spells the instance prompt strategy with an underscore.
_STRATEGY_ALIASES = {"instance_prompt": "instanceprompt"}

# sed-style replacement rule: s/search/replace/ (the trailing slash is optional).
_SED = re.compile(r"s/([^/]*)/([^/]*)/?")


def normalize_strategy(strategy: str) -> str:
    """The dataset-field spelling of a caption strategy; ValueError for an unknown one."""
    name = _STRATEGY_ALIASES.get(strategy, strategy)
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown caption_strategy {strategy!r}; accepted: {', '.join(STRATEGIES)}"
        )
    return name


def caption_from_filename(image_id: str) -> str:
    """``"nested/a_red_cat.v2.jpg"`` -> ``"a red cat.v2"``: the stem, underscores as spaces."""
    return PurePosixPath(image_id).stem.replace("_", " ").strip()


def captions_from_text(text: str | bytes | None, *, split_lines: bool = True) -> list[str]:
    """Captions of a .txt sidecar: one per non-empty line, or the whole text as one caption.

    Lines are stripped (so CRLF files and trailing spaces do not leak into captions); blank
    lines are dropped, as SimpleTuner drops empty strings after its newline split.
    """
    if text is None:
        return []
    if isinstance(text, bytes):
        text = text.decode("utf-8-sig", errors="replace")
    text = text.removeprefix("\ufeff")  # a BOM from editors that write one
    parts = text.split("\n") if split_lines else [text]
    return [p.strip() for p in parts if p.strip()]


def captions_from_metadata(value: Any, fallback: Any = None) -> list[str]:
    """Captions of a metadata cell: a string, bytes or a list/array of them.

    The fallback is used when the caption is null, NaN (missing CSV cell) or empty.
    """
    return _cell_captions(value) or _cell_captions(fallback)


def _cell_captions(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if hasattr(value, "tolist"):  # numpy arrays / scalars, pandas series
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [c for item in value for c in _cell_captions(item)]
    return _cell_captions(str(value))


def instance_prompts(value: Any) -> list[str]:
    """``instance_prompt`` as a list: SimpleTuner also accepts a list of prompts."""
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    if value is None or not str(value).strip():
        return []
    return [str(value).strip()]


def load_caption_filters(value: Any, base_dir: str | Path | None = None) -> list[str]:
    """A caption_filter_list value as a list of rules.

    Accepts a list, or a path to a ``.json`` file holding a list or a ``.txt`` file with one
    rule per line. Only the line break is removed from .txt lines: a trailing space is part of
    the rule (SimpleTuner's docs suggest "arafed " so no double space is left behind).
    """
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if v is not None and str(v) != ""]
    if not isinstance(value, str):
        raise ValueError(f"caption_filter_list must be a list or a file path, got {value!r}")
    path = Path(value)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if path.suffix == ".json":
        rules = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rules, list):
            raise ValueError(f"caption_filter_list file {path} must hold a JSON list")
        return load_caption_filters(rules)
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").split("\n")
        return [line.rstrip("\r") for line in lines if line.rstrip("\r")]
    raise ValueError(
        f"caption_filter_list {value!r} must be a JSON list or a path to a .txt or .json file"
    )


def apply_caption_filters(caption: str, filters: Sequence[str]) -> str:
    """Apply caption_filter_list rules in order, then strip the result.

    A rule ``s/search/replace/`` replaces every regex match of ``search`` (SimpleTuner runs
    ``re.sub``). Any other rule is removed both as a literal string and as a regular
    expression ("this .* has a", "^prefix"), as SimpleTuner does; an invalid regex is only
    removed literally.
    """
    for rule in filters:
        sed = _SED.fullmatch(rule)
        if sed:
            search, replace = sed.groups()
            try:
                caption = re.sub(search, replace, caption)
            except re.error:
                caption = caption.replace(search, replace)
            continue
        caption = caption.replace(rule, "")
        with contextlib.suppress(re.error):  # not a valid regex: removed literally above
            caption = re.sub(rule, "", caption)
    return caption.strip()


# caption_shuffle split_on -> (split character, joiner), as SimpleTuner's CaptionShuffler.
SHUFFLE_SPLITS = {"comma": (",", ", "), "space": (" ", " "), "period": (".", ". ")}


def caption_shuffle_problems(config: Any) -> list[tuple[str, str]]:
    """(field, message) for a caption_shuffle block SimpleTuner refuses at start-up."""
    if not config:
        return []
    if not isinstance(config, Mapping):
        return [("caption_shuffle", f"must be an object, found {type(config).__name__}")]
    problems = []
    if config.get("split_on", "comma") not in SHUFFLE_SPLITS:
        problems.append(
            (
                "caption_shuffle.split_on",
                f"{config['split_on']!r} is not accepted; accepted: {', '.join(SHUFFLE_SPLITS)}",
            )
        )
    for key, low, default in (("count", 1, 1), ("position_start", 0, 0)):
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(
                (f"caption_shuffle.{key}", f"must be an integer >= {low}, not {value!r}")
            )
    return problems


def with_shuffle_seed(entry_fields: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The entry's fields with the seed caption_shuffle will use written into its block, so a
    fingerprint of the fields changes when the run's seed changes the variants."""
    fields = dict(entry_fields)
    shuffle = fields.get("caption_shuffle")
    if isinstance(shuffle, Mapping) and shuffle.get("enable") and "seed" not in shuffle:
        fields["caption_shuffle"] = {**shuffle, "seed": seed}
    return fields


def shuffled_variants(caption: str, config: Mapping[str, Any] | None, seed: int) -> list[str]:
    """``caption`` and its tag-shuffled variants, as SimpleTuner's caption_shuffle makes them.

    The caption is split on ``split_on`` (comma, space or period; blank tags dropped), the first
    ``position_start`` tags stay in place and the rest are shuffled ``count`` times, each with
    ``random.Random(seed + md5(caption) mod 2**32 + i)``, so a caption always gets the same
    variants; ``seed`` is the block's own, else the run's. Duplicate variants are dropped, the
    original is kept first unless ``include_original`` is false, and a caption with fewer than
    two shufflable tags stays as it is.
    """
    if not config or not config.get("enable") or not caption.strip():
        return [caption]
    split, joiner = SHUFFLE_SPLITS[config.get("split_on", "comma")]
    tags = [tag.strip() for tag in caption.split(split) if tag.strip()]
    start = int(config.get("position_start", 0))
    fixed, movable = tags[:start], tags[start:]
    if len(movable) < 2:
        return [caption]
    variants = [caption] if config.get("include_original", True) else []
    base = int(config.get("seed", seed) or 0)
    digest = int(hashlib.md5(caption.encode("utf-8")).hexdigest(), 16) & 0xFFFFFFFF
    for i in range(int(config.get("count", 1))):
        order = list(movable)
        random.Random(base + digest + i).shuffle(order)
        variant = joiner.join(fixed + order)
        if variant not in variants:
            variants.append(variant)
    return variants or [caption]


def resolve_captions(
    strategy: str | None,
    *,
    image_id: str,
    sidecar_text: str | bytes | None,
    meta_caption: Any,
    meta_fallback: Any,
    entry_fields: Mapping[str, Any],
    generated_caption: str | None = None,
    caption_filters: Sequence[str] = (),
    seed: int = 0,
) -> list[str]:
    """The captions of one image under the dataset's caption settings; ``[]`` when none.

    strategy: the dataset's caption_strategy (None: ``entry_fields["caption_strategy"]``).
    sidecar_text: contents of the image's .txt sidecar, None when there is none.
    meta_caption / meta_fallback: the metadata row's caption and fallback caption cells.
    entry_fields: the dataset entry's fields (instance_prompt, prepend_instance_prompt,
        only_instance_prompt, disable_multiline_split).
    generated_caption: a model-generated caption (see ``st_ray.data.captioning``), used only
        when the strategy itself yields nothing.
    caption_filters: caption_filter_list rules (``load_caption_filters``); captions left empty
        by the filters are dropped.
    seed: the run's seed, for caption_shuffle blocks without their own.

    Raises ValueError for settings SimpleTuner rejects at start-up: caption_strategy
    'instanceprompt', only_instance_prompt or prepend_instance_prompt without an
    instance_prompt.
    """
    name = normalize_strategy(strategy or entry_fields.get("caption_strategy") or "filename")
    prompts = instance_prompts(entry_fields.get("instance_prompt"))
    split_lines = not entry_fields.get("disable_multiline_split")

    if name == "instanceprompt" or entry_fields.get("only_instance_prompt"):
        if not prompts:
            why = "only_instance_prompt"
            if name == "instanceprompt":
                why = "caption_strategy 'instanceprompt'"
            raise ValueError(f"{why} needs a non-empty instance_prompt")
        captions = prompts
    else:
        prepend = bool(entry_fields.get("prepend_instance_prompt"))
        if prepend and len(prompts) != 1:
            raise ValueError("prepend_instance_prompt needs a single non-empty instance_prompt")
        if name == "filename":
            captions = [c for c in [caption_from_filename(image_id)] if c]
        elif name == "textfile":
            captions = captions_from_text(sidecar_text, split_lines=split_lines)
        else:  # metadata strategies
            captions = captions_from_metadata(meta_caption, meta_fallback)
        if not captions and generated_caption:
            captions = captions_from_text(generated_caption, split_lines=split_lines)
        shuffle = entry_fields.get("caption_shuffle")
        captions = [v for c in captions for v in shuffled_variants(c, shuffle, seed)]
        if prepend:
            captions = [f"{prompts[0]} {c}" for c in captions]

    if caption_filters:
        captions = [f for f in (apply_caption_filters(c, caption_filters) for c in captions) if f]
    return captions

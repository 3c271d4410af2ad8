"""Dataset fields that inherit a run-wide option are declared once, on the option
(``dataset_field=True``): the dataset-field table derives them, and an entry that leaves one
out gets the run's value, as SimpleTuner's data backend factory does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from st_ray.config import dataset_fields
from st_ray.config.cli import options_help
from st_ray.config.dataset_fields import FIELDS, SAME_NAME_OTHER_MEANING
from st_ray.config.datasets import DatasetEntry, load_datasets
from st_ray.config.errors import ProblemList
from st_ray.config.options import CANONICAL, OPTIONS, REGISTRY
from st_ray.config.schema import Support, opt


def test_no_dataset_field_is_declared_twice() -> None:
    keys = [key for f in FIELDS for key in (f.name, *f.aliases)]
    assert len(keys) == len(set(keys))
    inheriting = {o.name for o in OPTIONS if o.dataset_field}
    assert {f.name for f in FIELDS if f.dataset_field} == inheriting
    # A field named like a run-wide option is that option's derived field, except the few
    # whose meaning differs per dataset (declared in dataset_fields, never inherited).
    shared = {f.name for f in FIELDS if f.name in REGISTRY}
    assert (
        shared - inheriting == SAME_NAME_OTHER_MEANING == {"revision", "cache_dir", "cache_dir_vae"}
    )


def test_redeclaring_an_inheriting_field_is_refused() -> None:
    again = opt("resolution", float, None, "Training size of this dataset.")
    with pytest.raises(RuntimeError, match="'resolution'.*declared twice"):
        dataset_fields._check_declared_once([*FIELDS, again])
    lone = [f for f in FIELDS if f.name != "resolution"]
    with pytest.raises(RuntimeError, match="'resolution' is also a run-wide option"):
        dataset_fields._check_declared_once([*lone, again])


@pytest.mark.parametrize("field", [f for f in FIELDS if f.dataset_field], ids=lambda f: f.name)
def test_inheriting_field_comes_from_its_run_option(field) -> None:
    option = CANONICAL[field.name]
    assert (field.type, field.default, field.help) == (option.type, option.default, option.help)
    assert (field.choices, field.minimum, field.maximum) == (
        option.choices,
        option.minimum,
        option.maximum,
    )
    assert field.no_effect == option.no_effect
    if option.dataset_unsupported:
        assert field.support is Support.NO and field.note == option.dataset_unsupported
    else:
        assert (field.support, field.note) == (option.support, option.note)


def _load(
    tmp_path: Path, entries: list[dict[str, Any]], **run: Any
) -> tuple[list[DatasetEntry], ProblemList]:
    (tmp_path / "images").mkdir(exist_ok=True)
    run_options = {"model_family": "sdxl", "output_dir": str(tmp_path / "out"), **run}
    problems = ProblemList()
    local = {"type": "local", "instance_data_dir": str(tmp_path / "images")}
    loaded = load_datasets([{**local, **e} for e in entries], run_options, {}, problems, tmp_path)
    return loaded, problems


def test_entries_inherit_run_values_and_override_them(tmp_path: Path) -> None:
    run = {"resolution": 512.0, "write_batch_size": 8, "caption_strategy": "instance_prompt"}
    (plain, own), problems = _load(
        tmp_path,
        [
            {"id": "plain", "instance_prompt": "a photo of sks"},
            {
                "id": "own",
                "resolution": 768,
                "write_batch_size": 16,
                "caption_strategy": "textfile",
            },
        ],
        **run,
    )
    assert not problems, problems.items
    assert (plain["resolution"], plain["write_batch_size"]) == (512.0, 8)
    assert plain["caption_strategy"] == "instanceprompt"  # one spelling in dataset fields
    assert (own["resolution"], own["write_batch_size"], own["caption_strategy"]) == (
        768.0,
        16,
        "textfile",
    )
    # A run that does not say gives the option's own default (the one --help shows).
    (bare,), _ = _load(tmp_path, [{"id": "bare"}])
    for name in ("resolution", "resolution_type", "caption_strategy", "aws_max_pool_connections"):
        assert bare[name] == CANONICAL[name].default


def test_per_dataset_values_st_ray_does_not_honour(tmp_path: Path) -> None:
    # Repeating the run-wide batch size changes nothing and is accepted ...
    (same,), problems = _load(tmp_path, [{"id": "same", "train_batch_size": 2}], train_batch_size=2)
    assert not problems and same["train_batch_size"] == 2
    # ... a different one would be silently ignored, so it is refused with the reason.
    _, problems = _load(tmp_path, [{"id": "other", "train_batch_size": 3}], train_batch_size=2)
    assert [p.key for p in problems.items] == ["train_batch_size"]
    assert "run-wide train_batch_size" in problems.items[0].message
    # A knob that does nothing under Ray is noted per dataset, as it is run-wide.
    _, problems = _load(tmp_path, [{"id": "x", "metadata_update_interval": 60}])
    assert not problems and any(
        "metadata_update_interval has no effect" in n for n in problems.notes
    )


def test_hub_dataset_captions_from_its_columns(tmp_path: Path) -> None:
    hub = {"type": "huggingface", "dataset_name": "user/data", "instance_data_dir": None}
    (entry,), problems = _load(tmp_path, [{"id": "hub", **hub}], caption_strategy="textfile")
    assert not problems, problems.items
    assert entry["caption_strategy"] == "huggingface"
    _, problems = _load(tmp_path, [{"id": "local", "caption_strategy": "huggingface"}])
    assert [p.key for p in problems.items] == ["caption_strategy"]


def test_help_says_which_options_datasets_inherit() -> None:
    text = options_help()
    block = text[text.index("  --resolution FLOAT") :].split("\n  --")[0]
    assert "also a dataset field" in block
    block = text[text.index("  --train_batch_size INT") :].split("\n  --")[0]
    assert "not honoured per dataset yet" in block

"""Caption strategies give SimpleTuner's captions for concrete inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from st_ray.data.captions import (
    apply_caption_filters,
    caption_from_filename,
    captions_from_text,
    load_caption_filters,
    normalize_strategy,
    resolve_captions,
)

NO_INPUTS = dict(sidecar_text=None, meta_caption=None, meta_fallback=None)


def resolve(strategy, image_id="img.png", fields=None, **inputs):
    return resolve_captions(
        strategy, image_id=image_id, entry_fields=fields or {}, **{**NO_INPUTS, **inputs}
    )


@pytest.mark.parametrize(
    ("image_id", "caption"),
    [
        ("a_red_cat.jpg", "a red cat"),
        ("nested/deeper/two_dogs_playing.png", "two dogs playing"),
        ("plain.jpeg", "plain"),
        ("dotted.name_v2.webp", "dotted.name v2"),  # only the last extension goes
        ("_leading_and_trailing_.png", "leading and trailing"),
        ("photo (1).jpg", "photo (1)"),  # SimpleTuner removes nothing but the underscores
        ("0.jpg", "0"),
    ],
)
def test_filename(image_id: str, caption: str) -> None:
    assert caption_from_filename(image_id) == caption
    assert resolve("filename", image_id=image_id) == [caption]


def test_filename_ignores_sidecar_and_metadata() -> None:
    got = resolve("filename", image_id="x_y.png", sidecar_text="other", meta_caption="meta")
    assert got == ["x y"]


def test_textfile_single_and_multiline() -> None:
    assert resolve("textfile", sidecar_text="  a cat on a mat \n") == ["a cat on a mat"]
    text = "first caption\n\n  second caption  \r\nthird\n"
    assert resolve("textfile", sidecar_text=text) == ["first caption", "second caption", "third"]
    assert resolve("textfile", sidecar_text=text.encode()) == [
        "first caption",
        "second caption",
        "third",
    ]
    assert captions_from_text("\ufeffwith bom") == ["with bom"]


def test_textfile_disable_multiline_split() -> None:
    fields = {"disable_multiline_split": True}
    got = resolve("textfile", fields=fields, sidecar_text="line one\nline two\n")
    assert got == ["line one\nline two"]


def test_textfile_missing_or_blank() -> None:
    assert resolve("textfile", sidecar_text=None) == []
    assert resolve("textfile", sidecar_text="  \n\n ") == []
    assert resolve("textfile", fields={"disable_multiline_split": True}, sidecar_text="\n") == []


@pytest.mark.parametrize("strategy", ["instanceprompt", "instance_prompt"])
def test_instanceprompt(strategy: str) -> None:
    fields = {"instance_prompt": "  sks dog "}
    assert resolve(strategy, fields=fields, sidecar_text="ignored") == ["sks dog"]
    # SimpleTuner also accepts a list of instance prompts: every one is a caption.
    assert resolve(strategy, fields={"instance_prompt": ["a", "b"]}) == ["a", "b"]
    with pytest.raises(ValueError, match="needs a non-empty instance_prompt"):
        resolve(strategy, fields={"instance_prompt": None})


def test_strategy_from_fields_and_unknown() -> None:
    fields = {"caption_strategy": "textfile"}
    assert resolve(None, fields=fields, sidecar_text="from field") == ["from field"]
    assert normalize_strategy("instance_prompt") == "instanceprompt"
    with pytest.raises(ValueError, match="unknown caption_strategy 'captionfile'"):
        resolve("captionfile")


def test_prepend_instance_prompt() -> None:
    fields = {"instance_prompt": "sks", "prepend_instance_prompt": True}
    assert resolve("filename", "a_dog.png", fields) == ["sks a dog"]
    assert resolve("textfile", fields=fields, sidecar_text="one\ntwo") == ["sks one", "sks two"]
    assert resolve("parquet", fields=fields, meta_caption=["x", "y"]) == ["sks x", "sks y"]
    # Nothing to prepend to: still no caption.
    assert resolve("textfile", fields=fields, sidecar_text=None) == []
    with pytest.raises(ValueError, match="prepend_instance_prompt"):
        resolve("filename", fields={"prepend_instance_prompt": True})


def test_only_instance_prompt() -> None:
    fields = {
        "instance_prompt": "sks",
        "only_instance_prompt": True,
        "prepend_instance_prompt": True,
    }
    assert resolve("filename", "a_dog.png", fields) == ["sks"]
    # Even an image without a caption file gets the instance prompt.
    assert resolve("textfile", fields=fields, sidecar_text=None) == ["sks"]
    assert resolve("parquet", fields=fields, meta_caption="meta") == ["sks"]
    with pytest.raises(ValueError, match="only_instance_prompt"):
        resolve("filename", fields={"only_instance_prompt": True})


@pytest.mark.parametrize("strategy", ["parquet", "csv", "huggingface"])
def test_metadata_caption_and_fallback(strategy: str) -> None:
    assert resolve(strategy, meta_caption=" a red square ", meta_fallback="tags") == [
        "a red square"
    ]
    for missing in (None, "", "   ", float("nan"), []):
        assert resolve(strategy, meta_caption=missing, meta_fallback=" red, square ") == [
            "red, square"
        ]
    assert resolve(strategy, meta_caption=None, meta_fallback=None) == []
    assert resolve(strategy, meta_caption=float("nan"), meta_fallback=float("nan")) == []


def test_metadata_lists() -> None:
    assert resolve("parquet", meta_caption=["one", " two ", None, ""]) == ["one", "two"]
    assert resolve("parquet", meta_caption=np.array(["a", "b"], dtype=object)) == ["a", "b"]
    assert resolve("parquet", meta_caption=("t",)) == ["t"]
    assert resolve("parquet", meta_caption=b"bytes caption") == ["bytes caption"]
    # A metadata string is one caption even with line breaks (only textfile splits lines).
    assert resolve("parquet", meta_caption="l1\nl2") == ["l1\nl2"]


def test_generated_caption_is_a_fallback_only() -> None:
    assert resolve("textfile", generated_caption="a generated one") == ["a generated one"]
    assert resolve("parquet", generated_caption="gen") == ["gen"]
    assert resolve("textfile", sidecar_text="human", generated_caption="gen") == ["human"]
    fields = {"instance_prompt": "sks", "prepend_instance_prompt": True}
    assert resolve("textfile", fields=fields, generated_caption="gen") == ["sks gen"]


def test_caption_filters() -> None:
    rules = ["arafed ", "this .* has a ", "^there is ", "s/dog/puppy/", "[unclosed"]
    assert apply_caption_filters("there is arafed cat", rules) == "cat"
    assert apply_caption_filters("this photo has a dog and a dog", rules) == ("puppy and a puppy")
    # Invalid regexes are still removed literally.
    assert apply_caption_filters("a [unclosed bracket", rules) == "a  bracket"
    # Trailing slash optional, backreferences allowed.
    assert apply_caption_filters("red cat", ["s/(red) (cat)/\\2 \\1"]) == "cat red"


def test_caption_filters_in_resolve() -> None:
    got = resolve("textfile", sidecar_text="arafed cat\narafed\nfine", caption_filters=["arafed"])
    assert got == ["cat", "fine"]  # a caption left empty is dropped


def test_load_caption_filters(tmp_path) -> None:
    assert load_caption_filters(None) == []
    assert load_caption_filters(["a", "", "b"]) == ["a", "b"]
    txt = tmp_path / "filters.txt"
    txt.write_text("arafed \nthis .* has a\r\n\ns/x/y/\n", encoding="utf-8")
    assert load_caption_filters(str(txt)) == ["arafed ", "this .* has a", "s/x/y/"]
    (tmp_path / "f.json").write_text(json.dumps(["one", "two"]))
    assert load_caption_filters("f.json", base_dir=tmp_path) == ["one", "two"]
    with pytest.raises(ValueError, match=r"\.txt or \.json"):
        load_caption_filters("not-a-path")

"""Gemma 2 text encoding shared by the families that condition on it (Sana, Lumina2).

Both pipelines keep a ``GemmaTokenizer`` in ``tokenizer/`` and a ``Gemma2Model`` in
``text_encoder/``, tokenise right-padded to a fixed length with Gemma's ``<bos>`` prepended, and
run the encoder with the attention mask; they differ in the prompt template, the length and the
hidden layer they keep, which the family modules decide. torch/transformers load lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_ray.models.text_encoders import TextEncoders

if TYPE_CHECKING:
    import torch

GEMMA_OPTION = "pretrained_gemma_model_name_or_path"


def _sources(model_path: str, options: Mapping[str, Any]) -> tuple[dict, dict]:
    """from_pretrained arguments for (tokenizer, encoder).

    pretrained_gemma_model_name_or_path names either a pipeline-shaped folder (with
    text_encoder/ and tokenizer/, read like the base model) or a plain Gemma 2 checkpoint such as
    google/gemma-2-2b-it, read from its top level (a Gemma2ForCausalLM checkpoint loads into
    Gemma2Model without its LM head). revision and variant describe the base repository only.
    """
    source = options.get(GEMMA_OPTION)
    if source:
        local = Path(source).expanduser()
        if local.is_dir() and (local / "text_encoder").is_dir():
            return (
                {"pretrained_model_name_or_path": str(local), "subfolder": "tokenizer"},
                {"pretrained_model_name_or_path": str(local), "subfolder": "text_encoder"},
            )
        plain = {"pretrained_model_name_or_path": str(local) if local.is_dir() else source}
        return plain, dict(plain)
    base: dict[str, Any] = {"pretrained_model_name_or_path": model_path}
    if options.get("revision"):
        base["revision"] = options["revision"]
    weights = {**base, "subfolder": "text_encoder"}
    if options.get("variant"):
        weights["variant"] = options["variant"]
    return {**base, "subfolder": "tokenizer"}, weights


def load(
    model_path: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    options: Mapping[str, Any],
) -> TextEncoders:
    """The pipeline's Gemma tokenizer and frozen Gemma2Model under the key ``text_encoder``."""
    from transformers import AutoTokenizer, Gemma2Model

    tok_source, model_source = _sources(model_path, options)
    tokenizer = AutoTokenizer.from_pretrained(**tok_source)
    model = Gemma2Model.from_pretrained(**model_source, dtype=dtype)
    model = model.to(device).eval().requires_grad_(False)
    return TextEncoders(
        models={"text_encoder": model}, tokenizers={"text_encoder": tokenizer}, device=device
    )


def encode(
    encoders: TextEncoders, prompts: list[str], *, max_length: int, hidden_layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma states (B, max_length, D) of ``hidden_layer`` (-1: the final, normed output) and
    the attention mask (B, max_length): prompts right-padded / truncated to ``max_length``
    tokens including ``<bos>``, encoded with the mask, as both pipelines do."""
    tokenizer = encoders.tokenizers["text_encoder"]
    model = encoders.models["text_encoder"]
    inputs = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        padding_side="right",  # the pipelines set tokenizer.padding_side = "right"
        return_tensors="pt",
    )
    ids = inputs.input_ids.to(model.device)
    mask = inputs.attention_mask.to(model.device)
    if hidden_layer == -1:
        return model(ids, attention_mask=mask)[0], mask
    out = model(ids, attention_mask=mask, output_hidden_states=True)
    return out.hidden_states[hidden_layer], mask


def token_count(encoders: TextEncoders, text: str) -> int:
    """Tokens of ``text`` with special tokens (what ``tokenizer.encode`` returns)."""
    return len(encoders.tokenizers["text_encoder"].encode(text))

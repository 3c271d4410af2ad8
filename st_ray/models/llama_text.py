"""Llama 3.x text encoding (HiDream's fourth encoder): every decoder layer's hidden state, as
the HiDream transformer reads one chosen layer per block."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def load(
    source: str, *, subfolders: tuple[str, str] | None, device, dtype, kwargs: dict[str, Any]
) -> tuple[Any, Any]:
    """(tokenizer, frozen LlamaForCausalLM) from ``source``: in its ``subfolders``
    (tokenizer, model) when given, else at its top level. The tokenizer pads with its EOS
    token, as the HiDream pipeline sets it."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok_kw = {"subfolder": subfolders[0]} if subfolders else {}
    model_kw = {"subfolder": subfolders[1]} if subfolders else {}
    revision = {k: v for k, v in kwargs.items() if k == "revision"}
    tokenizer = AutoTokenizer.from_pretrained(source, **tok_kw, **revision)
    tokenizer.pad_token = tokenizer.eos_token
    model = LlamaForCausalLM.from_pretrained(source, dtype=dtype, **model_kw, **kwargs)
    return tokenizer, model.to(device).eval().requires_grad_(False)


def is_local_plain(source: str, subfolder: str) -> bool:
    """A local folder without ``subfolder`` (a plain Llama checkpoint)."""
    local = Path(source).expanduser()
    return local.is_dir() and not (local / subfolder).is_dir()


def layer_states(
    tokenizer: Any, model: Any, prompts: list[str], *, max_length: int
) -> torch.Tensor:
    """(B, num_layers, L, D): the output of every decoder layer (hidden_states[1:], not the
    embeddings) for prompts padded/truncated to ``max_length`` and encoded with their mask."""
    import torch

    inputs = tokenizer(
        prompts,
        padding="max_length",
        max_length=min(max_length, tokenizer.model_max_length),
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    out = model(
        inputs.input_ids.to(model.device),
        attention_mask=inputs.attention_mask.to(model.device),
        output_hidden_states=True,
    )
    return torch.stack(out.hidden_states[1:], dim=1)

"""ChatGLM3 text encoding (Kolors): diffusers ships the model and tokenizer classes in
``diffusers.pipelines.kolors``, as transformers has none for ChatGLM.

The tokenizer pads on the left and returns ``position_ids``; the pipeline feeds all three
inputs to the encoder and reads two of its hidden states (see ``encode``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import text_encoders as te

if TYPE_CHECKING:
    import torch

# The KolorsPipeline refuses longer prompts (ChatGLM's rotary table in Kolors is trained on 256).
MAX_LENGTH = 256


def load(
    model_path: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    options: Mapping[str, Any],
    name: str = "text_encoder",
    tokenizer: str = "tokenizer",
) -> te.TextEncoders:
    """ChatGLMTokenizer from ``<tokenizer>/`` and a frozen ChatGLMModel from ``<name>/``,
    honouring the revision and variant options."""
    from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer

    kwargs: dict[str, Any] = {"revision": options["revision"]} if options.get("revision") else {}
    tok = ChatGLMTokenizer.from_pretrained(model_path, subfolder=tokenizer, **kwargs)
    if options.get("variant"):
        kwargs["variant"] = options["variant"]
    model = ChatGLMModel.from_pretrained(model_path, subfolder=name, dtype=dtype, **kwargs)
    model = model.to(device).eval().requires_grad_(False)
    return te.TextEncoders(models={name: model}, tokenizers={name: tok}, device=device)


def encode(
    encoders: te.TextEncoders, name: str, prompts: list[str], *, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) penultimate hidden states and the (B, D) final-layer state of the last token,
    the KolorsPipeline's ``prompt_embeds`` and ``pooled_prompt_embeds``.

    ChatGLM runs sequence-first ((L, B, D) hidden states); prompts are left-padded with the
    mask and per-token position ids, so the last position always holds a real token.
    """
    if not 0 < max_length <= MAX_LENGTH:
        raise ValueError(
            f"tokenizer_max_length {max_length} is out of range for ChatGLM (Kolors): "
            f"accepted 1..{MAX_LENGTH}"
        )
    tokenizer, model = encoders.tokenizers[name], encoders.models[name]
    inputs = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_tensors="pt",
    )
    out = model(
        input_ids=inputs["input_ids"].to(model.device),
        attention_mask=inputs["attention_mask"].to(model.device),
        position_ids=inputs["position_ids"].to(model.device),
        output_hidden_states=True,
    )
    return out.hidden_states[-2].permute(1, 0, 2), out.hidden_states[-1][-1]

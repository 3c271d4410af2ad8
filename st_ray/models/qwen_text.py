"""Qwen2.5-VL as a text encoder, the way QwenImagePipeline runs it.

The prompt is wrapped in the pipeline's chat template; the encoder's last hidden state is
taken for the real (unpadded) tokens, the template's fixed prefix (``DROP``, 34 tokens with the
real tokenizer) is dropped, and what is left is the conditioning. For the cache every prompt
is zero-padded to one fixed length with a 0/1 mask, so captions of any length stack in a batch
(the transformer masks padding keys out, and text positions do not depend on the padding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import text_encoders as te

if TYPE_CHECKING:
    import torch

# QwenImagePipeline.prompt_template_encode / _start_idx / tokenizer_max_length (diffusers 0.42).
TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
DROP = 34
TOKENIZER_MAX_LENGTH = 1024


def load(
    model_path: str, *, device: torch.device, dtype: torch.dtype, options: Mapping[str, Any]
) -> te.TextEncoders:
    """Qwen2Tokenizer from ``tokenizer/`` and Qwen2_5_VLForConditionalGeneration from
    ``text_encoder/`` (frozen, eval), honouring revision and variant."""
    import transformers

    revision = {"revision": options["revision"]} if options.get("revision") else {}
    variant = {"variant": options["variant"]} if options.get("variant") else {}
    tokenizer = transformers.Qwen2Tokenizer.from_pretrained(
        model_path, subfolder="tokenizer", **revision
    )
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_path, subfolder="text_encoder", dtype=dtype, **revision, **variant
    )
    model = model.to(device).eval().requires_grad_(False)
    return te.TextEncoders(
        models={"text_encoder": model}, tokenizers={"text_encoder": tokenizer}, device=device
    )


def encode(
    encoders: te.TextEncoders, prompts: list[str], *, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeds (B, length, D), mask (B, length)): the pipeline's ``_get_qwen_prompt_embeds``
    cut to ``length`` tokens (its ``max_sequence_length``), zero-padded to exactly ``length``."""
    import torch

    tokenizer, model = encoders.tokenizers["text_encoder"], encoders.models["text_encoder"]
    tokens = tokenizer(
        [TEMPLATE.format(p) for p in prompts],
        max_length=TOKENIZER_MAX_LENGTH + DROP,
        padding=True,
        truncation=True,
        return_tensors="pt",
    ).to(model.device)
    hidden = model(
        input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
    ).hidden_states[-1]
    embeds = hidden.new_zeros(len(prompts), length, hidden.shape[-1])
    mask = torch.zeros(len(prompts), length, dtype=torch.long, device=hidden.device)
    for i, row in enumerate(tokens.attention_mask.bool()):
        kept = hidden[i][row][DROP:][:length]
        embeds[i, : len(kept)] = kept
        mask[i, : len(kept)] = 1
    return embeds, mask

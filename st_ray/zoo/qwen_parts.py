"""Tiny Qwen2.5-VL pieces for the zoo: a byte-level BPE Qwen2Tokenizer and the text encoder.

The tokenizer is learned offline on the built-in caption corpus plus Qwen-Image's prompt
template, weighted so every word of the template is one token: the template's prefix then
tokenises into exactly the 34 tokens the QwenImagePipeline drops (its
``prompt_template_encode_start_idx``), as with the real tokenizer.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from . import parts

VOCAB_SIZE = 1200  # learned BPE pieces; the special tokens come after them
# Special tokens spelled as in Qwen/Qwen2.5-VL-7B-Instruct, in its id order.
SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# QwenImagePipeline.prompt_template_encode (diffusers 0.42), the text the encoder sees.
TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
HIDDEN = parts.HIDDEN


@functools.cache
def _bpe() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """(vocab, merges) of a BPE learned with the Qwen2 normaliser and pre-tokeniser."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    backend = Qwen2Tokenizer().backend_tokenizer
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = backend.normalizer
    tokenizer.pre_tokenizer = backend.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The template (without its special tokens) often enough that each word merges whole.
    template = TEMPLATE.format("")
    for token in SPECIAL:
        template = template.replace(token, " ")
    tokenizer.train_from_iterator(parts.corpus_lines() + [template] * 500, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = tuple(
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]
    )
    return tuple(sorted(model["vocab"].items(), key=lambda kv: kv[1])), merges


def tokenizer():
    """Qwen2Tokenizer over the generated BPE, specials appended after the learned pieces."""
    from transformers import AddedToken, Qwen2Tokenizer

    vocab, merges = _bpe()
    vocab_dict = dict(vocab)
    for token in SPECIAL:
        vocab_dict[token] = len(vocab_dict)
    tok = Qwen2Tokenizer(vocab=vocab_dict, merges=list(merges), model_max_length=32768)
    tok.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True) for t in SPECIAL[1:]]}
    )
    return tok


def write_legacy_files(folder: Path) -> None:
    """vocab.json and merges.txt beside tokenizer.json, as the real Qwen tokenizers ship."""
    vocab, merges = _bpe()
    (folder / "vocab.json").write_text(json.dumps(dict(vocab), ensure_ascii=False))
    lines = "\n".join(f"{a} {b}" for a, b in merges)
    (folder / "merges.txt").write_text(f"#version: 0.2\n{lines}\n", encoding="utf-8")


def text_encoder(seed: int, name: str = "text_encoder"):
    """Tiny Qwen2_5_VLForConditionalGeneration (2 text layers, 1 vision block), with the
    multimodal rotary sections (mrope) of the real model scaled to the tiny head size."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: len(_bpe()[0]) + i for i, t in enumerate(SPECIAL)}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(ids) + len(_bpe()[0]),
            "hidden_size": HIDDEN,
            "intermediate_size": HIDDEN * 2,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [2, 3, 3],  # sums to head_dim / 2 (real: 16, 24, 24)
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": HIDDEN,
            "intermediate_size": HIDDEN,
            "num_heads": 2,
            "out_hidden_size": HIDDEN,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    return parts.seeded(seed, name, lambda: Qwen2_5_VLForConditionalGeneration(config).eval())

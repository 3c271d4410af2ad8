"""Tiny BLIP image captioner (Salesforce/blip-image-captioning-base layout).

Written with ``save_pretrained`` of ``BlipForConditionalGeneration`` and ``BlipProcessor``,
so the folder loads through ``AutoProcessor`` / ``AutoModelForImageTextToText`` like the real
checkpoint. The WordPiece tokenizer is built from the zoo's caption corpus words; ``[DEC]`` is
the decoder's start token as in BLIP. Weights are random, so captions are word salad, but
generation is real: greedy decoding is deterministic and depends on the image.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from . import parts

HIDDEN = parts.HIDDEN
IMAGE_SIZE = 32  # 4x4 patches of 8 px
MAX_LENGTH = 64
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DECODER_BOS = "[DEC]"
# Large enough that the image (through cross-attention) visibly changes greedy decoding.
INIT_RANGE = 0.2
SPECIAL_LOGIT_BIAS = -30.0
PIECE_LOGIT_BIAS = -10.0  # single characters and ##continuations: whole words read better


@functools.cache
def wordpiece_vocab() -> tuple[str, ...]:
    """Special tokens, lower-case characters, ``##`` continuations, then corpus words."""
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]  # BERT lower-cases
    words = sorted({w.lower() for line in parts.corpus_lines() for w in line.split()})
    tokens = [*SPECIALS, *chars, *(f"##{c}" for c in chars if c.isalnum())]
    tokens += [w for w in words if w.isalpha() and w not in chars]
    return tuple(dict.fromkeys(tokens))


def tokenizer():
    from transformers import BertTokenizer

    vocab = wordpiece_vocab()
    tok = BertTokenizer(
        vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, model_max_length=MAX_LENGTH
    )
    tok.add_special_tokens({"bos_token": DECODER_BOS})  # id len(vocab), as BLIP appends [DEC]
    return tok


def model(seed: int, tok):
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipTextConfig,
        BlipVisionConfig,
    )

    common = dict(
        hidden_size=HIDDEN,
        intermediate_size=HIDDEN * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=HIDDEN,
        initializer_range=INIT_RANGE,
    )
    config = BlipConfig(
        text_config=BlipTextConfig(
            vocab_size=len(tok),
            encoder_hidden_size=HIDDEN,
            max_position_embeddings=MAX_LENGTH,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.sep_token_id,
            sep_token_id=tok.sep_token_id,
            pad_token_id=tok.pad_token_id,
            **common,
        ),
        vision_config=BlipVisionConfig(image_size=IMAGE_SIZE, patch_size=8, **common),
        projection_dim=HIDDEN,
        image_text_hidden_size=HIDDEN,
    )
    blip = parts.seeded(seed, "captioner", lambda: BlipForConditionalGeneration(config).eval())
    # A random model would sometimes stop at once or emit [UNK]/[PAD]: push special tokens
    # (the end token [SEP] included) far down and sub-word pieces somewhat down, so every
    # caption is max_new_tokens corpus words.
    with torch.no_grad():
        bias = blip.text_decoder.cls.predictions.bias
        for index, token in enumerate(wordpiece_vocab()):
            if token in SPECIALS:
                bias[index] = SPECIAL_LOGIT_BIAS
            elif len(token) == 1 or token.startswith("##"):
                bias[index] = PIECE_LOGIT_BIAS
        bias[tok.bos_token_id] = SPECIAL_LOGIT_BIAS
    return blip


def build(out_dir: Path, seed: int) -> None:
    from transformers import BlipProcessor
    from transformers.models.blip import BlipImageProcessorPil

    tok = tokenizer()
    # The PIL variant needs no torchvision; it saves as "BlipImageProcessor" like the real repo.
    images = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = BlipProcessor(image_processor=images, tokenizer=tok)
    blip = model(seed, tok)
    out_dir = Path(out_dir)
    blip.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    # The real repo also ships vocab.txt for slow/legacy BERT tokenizer loaders.
    (out_dir / "vocab.txt").write_text("\n".join(wordpiece_vocab()) + "\n", encoding="utf-8")

"""Tiny Gemma-2 text encoder and tokenizer for the zoo (Sana and Lumina2 condition on Gemma 2).

The tokenizer is a sentencepiece BPE trained offline on the zoo's built-in caption corpus with
Gemma's special-token layout (pad 0, eos 1, bos 2, unk 3, byte fallback, no dummy prefix,
bos added, nothing appended) and converted by transformers exactly as the real
``tokenizer.model`` files are. The encoder is a random two-layer ``Gemma2Model``, the class the
real pipelines ship in ``text_encoder/``.
"""

from __future__ import annotations

import functools
import io
import tempfile
from pathlib import Path

from . import parts

GEMMA_VOCAB = 1500  # sentencepiece pieces; transformers adds <mask> after them
# Gemma's chat-turn markers exist in the real vocabulary; kept so prompts using them tokenize.
_USER_SYMBOLS = ["<start_of_turn>", "<end_of_turn>"]


def _corpus() -> list[str]:
    """The caption corpus plus the prompt templates the Gemma families prepend (Sana's complex
    human instruction, Lumina2's system prompt), so that, as with the real 256k vocabulary, they
    take word-sized tokens rather than hundreds of characters."""
    from st_ray.models.lumina2 import SYSTEM_PROMPT
    from st_ray.models.sana import COMPLEX_HUMAN_INSTRUCTION

    templates = [COMPLEX_HUMAN_INSTRUCTION, SYSTEM_PROMPT]
    return parts.corpus_lines() + [line for t in templates for line in t.split("\n")] * 5


@functools.cache
def _gemma_spm() -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=GEMMA_VOCAB,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=_USER_SYMBOLS,
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    return buf.getvalue()


def gemma_tokenizer():
    """GemmaTokenizer converted from the generated tokenizer.model (bos added, no eos)."""
    from transformers import GemmaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(_gemma_spm())
        tok = GemmaTokenizer.from_pretrained(tmp, add_bos_token=True, add_eos_token=False)
    for key in ("is_local", "local_files_only", "name_or_path"):
        tok.init_kwargs.pop(key, None)
    return tok


def gemma2_encoder(seed: int, name: str, *, hidden_size: int = parts.HIDDEN):
    """Tiny Gemma2Model (2 layers, grouped-query attention, logit soft-capping as in Gemma 2)."""
    from transformers import Gemma2Config, Gemma2Model

    tok = gemma_tokenizer()
    config = Gemma2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden_size // 2,
        query_pre_attn_scalar=hidden_size // 2,
        max_position_embeddings=2048,
        sliding_window=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return parts.seeded(seed, name, lambda: Gemma2Model(config).eval())


def save_tokenizer_model(out_dir: Path, folder: str = "tokenizer") -> None:
    """The real repos also ship the sentencepiece tokenizer.model next to tokenizer.json."""
    (Path(out_dir) / folder / "tokenizer.model").write_bytes(_gemma_spm())

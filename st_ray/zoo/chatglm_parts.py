"""Tiny ChatGLM3 pieces for the zoo (Kolors): a sentencepiece BPE ``tokenizer.model`` trained
on the built-in caption corpus and a 2-layer ChatGLMModel, both in the layout of
Kwai-Kolors' ``tokenizer/`` and ``text_encoder/``."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import torch

from . import parts

# sentencepiece pieces; ChatGLM's tokenizer appends 9 special tokens ([gMASK], sop, roles...)
# after them, so the embedding table is padded past that like the real padded_vocab_size.
SPM_VOCAB = 1000
PADDED_VOCAB = 1024


@functools.cache
def _spm_model() -> bytes:
    """BPE with ChatGLM3's ids: unk 0 (also the pad id), bos 1, eos 2."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(parts.corpus_lines()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=SPM_VOCAB,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    return buf.getvalue()


def tokenizer(folder: Path):
    """A ChatGLMTokenizer over the generated model, written to ``folder/tokenizer.model``
    (the tokenizer copies that file when the pipeline is saved, so it must outlive the save)."""
    from diffusers.pipelines.kolors import ChatGLMTokenizer

    path = Path(folder) / "tokenizer.model"
    path.write_bytes(_spm_model())
    return ChatGLMTokenizer(vocab_file=str(path))


def text_encoder(seed: int, name: str = "text_encoder", *, hidden: int = parts.HIDDEN):
    """A 2-layer ChatGLM3 (multi-query attention, qkv bias, RMSNorm, original RoPE)."""
    from diffusers.pipelines.kolors import ChatGLMModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

    config = ChatGLMConfig(
        num_layers=2,  # the pipeline reads the penultimate hidden state
        padded_vocab_size=PADDED_VOCAB,
        hidden_size=hidden,
        ffn_hidden_size=hidden * 2,
        kv_channels=hidden // 4,
        num_attention_heads=4,
        seq_length=256,
        add_qkv_bias=True,
        multi_query_attention=True,
        multi_query_group_num=2,
        original_rope=True,
        use_cache=False,
    )

    def build():
        model = ChatGLMModel(config, empty_init=False).eval()
        # ChatGLM's _init_weights is a no-op and RMSNorm starts from torch.empty: set it.
        for module_name, param in model.named_parameters():
            if "layernorm" in module_name:
                torch.nn.init.ones_(param.data)
        return model

    return parts.seeded(seed, name, build)

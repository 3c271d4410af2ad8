"""Tiny Llama 3.x pieces for the zoo (HiDream's fourth encoder): a byte-level BPE
PreTrainedTokenizerFast with Llama 3's special tokens, trained on the built-in caption corpus,
and a 2-layer LlamaForCausalLM."""

from __future__ import annotations

import functools

from . import parts

VOCAB_SIZE = 1000
BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"


@functools.cache
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(parts.corpus_lines(), trainer=trainer)
    # Llama 3 prepends <|begin_of_text|> and appends nothing.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    return tok.to_str()


def tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=131072,
    )


def causal_lm(seed: int, name: str, *, hidden: int = parts.HIDDEN, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    return parts.seeded(seed, name, lambda: LlamaForCausalLM(config).eval())

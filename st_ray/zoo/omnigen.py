"""Tiny OmniGen v1 (Shitao/OmniGen-v1-diffusers layout): a 2-layer Phi-3 style
OmniGenTransformer2DModel with its own token embedding, an SDXL-style VAE, the inverted-sigma
flow scheduler and a Llama (sentencepiece-style BPE) tokenizer with Phi-3's chat tokens."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import diffusers
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, OmniGenTransformer2DModel

from . import parts

BPE_VOCAB = 1000
# The chat-template markers the processor writes, single tokens as in Phi-3's vocabulary.
CHAT_TOKENS = ["<|user|>", "<|assistant|>", "<|end|>", "<|diffusion|>"]
VOCAB_SIZE = 1024  # embedding rows (real: 32064, past the tokenizer's 32011)
PAD_TOKEN_ID = 1023  # the embedding's padding row (real: 32000)
HEADS = 4


@functools.cache
def _bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Metaspace BPE with Llama's special ids (unk 0, bos 1, eos 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(parts.corpus_lines(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def tokenizer():
    from transformers import LlamaTokenizer

    vocab, merges = _bpe()
    tok = LlamaTokenizer(vocab=dict(vocab), merges=list(merges), legacy=False, add_bos_token=True)
    tok.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
    return tok


def build(out_dir: Path, seed: int) -> None:
    hidden = parts.HIDDEN
    rope_factors = [1.0] * (hidden // HEADS // 2)
    transformer = parts.seeded(
        seed,
        "transformer",
        lambda: OmniGenTransformer2DModel(
            in_channels=4,
            patch_size=2,
            hidden_size=hidden,
            num_attention_heads=HEADS,
            num_key_value_heads=HEADS,
            intermediate_size=hidden * 2,
            num_layers=2,
            pad_token_id=PAD_TOKEN_ID,
            vocab_size=VOCAB_SIZE,
            rope_scaling={"short_factor": rope_factors, "long_factor": rope_factors},
            pos_embed_max_size=16,  # up to 256 px
            time_step_dim=hidden,
        ).eval(),
    )
    # As in the real checkpoint: t runs 0 (noise) -> 1 on a 0-1 scale.
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True, num_train_timesteps=1)
    components = {
        "scheduler": scheduler,
        "tokenizer": tokenizer(),
        "transformer": transformer,
        "vae": parts.vae(seed, scaling_factor=0.13025, sample_size=64),
    }
    # Written component by component: OmniGenPipeline's constructor needs torchvision (for its
    # multimodal processor), which st_ray does not require. Same files as save_pretrained.
    for name, component in components.items():
        if isinstance(component, torch.nn.Module):
            component.save_pretrained(out_dir / name, safe_serialization=True)
        else:
            component.save_pretrained(out_dir / name)
    index = {"_class_name": "OmniGenPipeline", "_diffusers_version": diffusers.__version__}
    for name, component in components.items():
        library = (
            "diffusers" if type(component).__module__.startswith("diffusers") else "transformers"
        )
        index[name] = [library, type(component).__name__]
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

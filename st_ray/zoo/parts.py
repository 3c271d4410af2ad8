"""Shared building pieces for the tiny-model zoo.

Tokenizers are generated locally from a built-in caption corpus (no hub files): a byte-level
CLIP BPE (vocab.json + merges.txt) and a T5 sentencepiece unigram model (spiece.model). They
do not depend on the seed, so they are built once per process. Weights are random and seeded
per component, so a (family, seed) pair always yields byte-identical safetensors.
"""

from __future__ import annotations

import functools
import io
import json
import random
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")

# Sizes shared by every family: tiny, but with the real structural ratios where they matter
# (8x VAE downsampling, 77-token CLIP context, 100 T5 sentinel tokens).
HIDDEN = 32
CLIP_VOCAB_SIZE = 1000
CLIP_MAX_LENGTH = 77
T5_VOCAB_TARGET = 1000  # sentencepiece pieces + 100 <extra_id_*> sentinels
T5_EXTRA_IDS = 100
T5_MAX_LENGTH = 512
VAE_BLOCKS = (16, 16, 32, 32)  # four blocks -> vae_scale_factor 8, like the real VAEs

# Special tokens spelled as in the real CLIP tokenizers.
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
# OpenCLIP-derived tokenizers (SD2.x, SDXL tokenizer_2, SD3 tokenizer_2) pad with "!".
OPENCLIP_PAD = "!"

_CAPTION_WORDS = """
a an the of in on at with and or by for from to over under near behind beside between into
photo photograph picture image painting drawing sketch illustration render portrait landscape
closeup close up view shot scene style art artwork digital oil watercolor pencil ink anime
cartoon realistic detailed highly sharp focus soft blurry bokeh cinematic lighting light
dark bright shadow sunlight sunset sunrise night day morning evening golden hour dramatic
cat cats dog dogs bird birds horse fish bear lion tiger fox wolf rabbit deer owl butterfly
man woman men women person people child children boy girl baby old young smiling happy sad
face eyes hair hand hands dress shirt hat coat jacket glasses wearing holding sitting
standing walking running flying swimming sleeping looking reading playing eating drinking
house home room kitchen window door table chair bed sofa lamp book books cup bottle
flower flowers tree trees forest garden grass field meadow mountain mountains hill river
lake sea ocean beach sand wave waves sky clouds cloud rain snow storm fog moon sun stars
city street road bridge building buildings tower castle church village town car cars bus
train boat ship plane bicycle red orange yellow green blue purple pink brown black white
gray grey gold silver colorful small large big tiny huge little tall short long wide
beautiful pretty cute ugly strange old new ancient modern futuristic vintage retro magic
fantasy science fiction robot dragon space planet galaxy astronaut knight wizard warrior
king queen princess food pizza cake apple bread coffee tea fruit vegetables plate bowl
wooden stone metal glass paper plastic water fire ice smoke wood rock rocks wall floor
one two three four five many some several top bottom left right center background
foreground there is are was has have very quite made covered full empty inside outside
"""


def corpus_lines() -> list[str]:
    """Deterministic built-in caption corpus shared by both tokenizer trainers."""
    rng = random.Random(1234)
    vocabulary = _CAPTION_WORDS.split()
    lines = []
    for i in range(3000):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(4, 12))]
        if i % 3 == 0:
            words[0] = words[0].capitalize()
        if i % 5 == 0:
            words.append(str(rng.randint(0, 2024)))
        lines.append(" ".join(words) + rng.choice([".", ",", "!", "?", ""]))
    # Guarantee every printable ASCII character is seen, so nothing common maps to <unk>.
    printable = "".join(chr(c) for c in range(33, 127))
    lines += [printable, " ".join(printable)] * 20
    return lines


def seeded(seed: int, name: str, ctor: Callable[[], T]) -> T:
    """Construct one component under its own RNG stream.

    Each component gets a seed derived from (seed, name) so components with identical configs
    (e.g. SD3's two CLIP encoders) still differ, and the caller's global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        return ctor()


# ---------------------------------------------------------------- CLIP tokenizer + encoders


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    # Same reversible byte->unicode table as GPT-2/CLIP byte-level BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@functools.cache
def _clip_bpe() -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    """Learn a CLIP-style BPE (``</w>`` end-of-word suffix) on the built-in corpus.

    Vocab order mirrors openai/clip-vit-large-patch14: 256 byte symbols, the same with
    ``</w>``, merged tokens in merge order, then <|startoftext|> and <|endoftext|> last.
    """
    from transformers import CLIPTokenizer

    # Split words exactly as the runtime tokenizer will: its own normalizer + pre-tokenizer
    # (lowercasing, CLIP's word regex, byte-level mapping).
    backend = CLIPTokenizer().backend_tokenizer
    freqs: Counter[tuple[str, ...]] = Counter()
    for line in corpus_lines():
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(
            backend.normalizer.normalize_str(line)
        ):
            freqs[tuple(piece[:-1]) + (piece[-1] + "</w>",)] += 1

    b2u = _bytes_to_unicode()
    base = list(b2u.values())
    vocab = base + [c + "</w>" for c in base]
    seen = set(vocab)
    merges: list[str] = []
    words = dict(freqs)
    while len(vocab) < CLIP_VOCAB_SIZE - 2:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, f in words.items():
            for pair in zip(w, w[1:], strict=False):
                pairs[pair] += f
        if not pairs:
            raise RuntimeError("zoo corpus too small for the requested CLIP vocab size")
        # Highest count wins; ties break lexicographically so the result is deterministic.
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append(f"{a} {b}")
        if a + b not in seen:
            seen.add(a + b)
            vocab.append(a + b)
        new_words: dict[tuple[str, ...], int] = {}
        for w, f in words.items():
            if a not in w or b not in w:  # fast path: most words are unaffected
                new_words[w] = new_words.get(w, 0) + f
                continue
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + f
        words = new_words
    vocab += [CLIP_BOS, CLIP_EOS]
    return tuple((t, i) for i, t in enumerate(vocab)), tuple(merges)


def clip_tokenizer(pad_token: str = CLIP_EOS):
    """A CLIPTokenizer over the generated BPE; ``pad_token="!"`` mimics OpenCLIP tokenizers."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=[tuple(m.split(" ")) for m in merges],
        pad_token=pad_token,
        model_max_length=CLIP_MAX_LENGTH,
    )


def clip_text_encoder(
    seed: int,
    name: str,
    *,
    with_projection: bool = False,
    hidden_act: str = "quick_gelu",
    hidden_size: int = HIDDEN,
    pad_token: str = CLIP_EOS,
):
    """Tiny CLIPTextModel(WithProjection). quick_gelu = OpenAI CLIP-L, gelu = OpenCLIP."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = dict(_clip_bpe()[0])
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,  # >= 2 because SDXL/SD3 read the penultimate hidden state
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act=hidden_act,
        projection_dim=hidden_size,
        bos_token_id=vocab[CLIP_BOS],
        eos_token_id=vocab[CLIP_EOS],
        pad_token_id=vocab[pad_token],
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return seeded(seed, name, lambda: cls(config).eval())


# ------------------------------------------------------------------ T5 tokenizer + encoder


@functools.cache
def _spiece_model() -> bytes:
    """Train the T5 sentencepiece unigram model (T5 ids: pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=buf,
        model_type="unigram",
        vocab_size=T5_VOCAB_TARGET - T5_EXTRA_IDS,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,  # single thread keeps training deterministic
        minloglevel=2,
    )
    return buf.getvalue()


def t5_tokenizer():
    """T5Tokenizer(Fast) converted by transformers from the generated spiece.model."""
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spiece.model").write_bytes(_spiece_model())
        # Loading through from_pretrained uses the same spiece->tokenizer.json conversion as
        # the real checkpoints' tokenizers.
        tok = T5Tokenizer.from_pretrained(
            tmp, model_max_length=T5_MAX_LENGTH, extra_ids=T5_EXTRA_IDS
        )
    # Loader bookkeeping about the temp dir would otherwise leak into tokenizer_config.json.
    for key in ("is_local", "local_files_only", "name_or_path"):
        tok.init_kwargs.pop(key, None)
    return tok


def _t5_config(d_model: int) -> dict:
    """The tiny T5-family encoder shape (gated-gelu, untied) T5 and UMT5 share."""
    return dict(
        vocab_size=T5_VOCAB_TARGET,
        d_model=d_model,
        d_kv=8,
        d_ff=d_model * 2,
        num_layers=2,
        num_heads=d_model // 8,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        is_encoder_decoder=False,
        use_cache=False,
    )


def t5_encoder(seed: int, name: str, *, d_model: int = HIDDEN):
    """Tiny T5EncoderModel with the t5-v1_1 (gated-gelu, untied) architecture."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(**_t5_config(d_model))
    return seeded(seed, name, lambda: T5EncoderModel(config).eval())


def umt5_encoder(seed: int, name: str, *, d_model: int = HIDDEN):
    """Tiny UMT5EncoderModel (per-layer relative attention bias, gated-gelu, untied)."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(**_t5_config(d_model))
    return seeded(seed, name, lambda: UMT5EncoderModel(config).eval())


# ------------------------------------------------------------------------------------ VAE


def vae(
    seed: int,
    *,
    latent_channels: int = 4,
    scaling_factor: float,
    shift_factor: float | None = None,
    use_quant_conv: bool = True,
    force_upcast: bool = True,
    sample_size: int = 64,
):
    """Tiny AutoencoderKL with four blocks, so latents are 8x smaller like the real VAEs."""
    from diffusers import AutoencoderKL

    return seeded(
        seed,
        "vae",
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
            up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
            block_out_channels=VAE_BLOCKS,
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=latent_channels,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_quant_conv,
            force_upcast=force_upcast,
        ).eval(),
    )


# -------------------------------------------------------------------------------- saving


def save_pipeline(pipe, out_dir: Path) -> None:
    """Write the pipeline like the real repos, plus the tokenizers' legacy vocab files.

    transformers 5 saves tokenizers as tokenizer.json only; the real checkpoints also ship
    vocab.json/merges.txt (CLIP) and spiece.model (T5), which older or slow loaders need.
    """
    from transformers import CLIPTokenizer, T5Tokenizer

    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for name, component in pipe.components.items():
        folder = out_dir / name
        if isinstance(component, CLIPTokenizer):
            vocab, merges = _clip_bpe()
            (folder / "vocab.json").write_text(json.dumps(dict(vocab), ensure_ascii=False))
            (folder / "merges.txt").write_text(
                "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
            )
        elif isinstance(component, T5Tokenizer):
            (folder / "spiece.model").write_bytes(_spiece_model())


def parameter_count(pipe) -> int:
    """Total parameters over the pipeline's torch modules (for reports)."""
    return sum(
        p.numel()
        for c in pipe.components.values()
        if isinstance(c, torch.nn.Module)
        for p in c.parameters()
    )

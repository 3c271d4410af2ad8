"""OmniGen v1 (text-to-image): a Phi-3 transformer that embeds the prompt's token ids itself,
so there is no text encoder to run. The cache holds the ids ``OmniGenMultiModalProcessor``
makes (its chat template, one row per prompt, left-padded) and ``predict`` builds the
attention mask and position ids the processor's collator would for the latent size.

Flow matching with OmniGen's own direction: its scheduler inverts the sigmas, so the
transformer sees t = 1 - sigma (0 = noise) and predicts x0 - noise; ``predict`` converts
from st_ray's sigma convention and negates the output. Image-conditioned (editing) training
is not supported, as in SimpleTuner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models import text_encoders as te
from st_ray.models.family import FamilySpec, Prediction, unwrap
from st_ray.models.family import noise_scheduler_config as _scheduler_config

if TYPE_CHECKING:
    import numpy as np
    import torch

SPEC = FamilySpec(
    name="omnigen",
    denoiser="transformer",
    denoiser_class="OmniGenTransformer2DModel",
    prediction_types=("flow_matching",),
    flavours={"v1": "Shitao/OmniGen-v1-diffusers"},  # SimpleTuner's only flavour
    pixel_granularity=16,  # 8x SDXL VAE, 2x2 patches
    text_encoders=0,
    pipeline_class="OmniGenPipeline",
)

TOKENIZER = "tokenizer"
# The processor pads with id 2 (its collator's fixed pad_token_id); padding is masked out.
PAD_ID = 2
# Token rows are cached at a fixed width; the pipeline itself never truncates, so a longer
# prompt is refused rather than cut (cutting would drop the template's closing tokens).
DEFAULT_LENGTH = 256


def max_length(options: Mapping[str, Any]) -> int:
    return te.t5_max_length(options, DEFAULT_LENGTH)


def load_text_encoders(
    model_path: str, *, device: torch.device, dtype: torch.dtype, options: Mapping[str, Any]
) -> te.TextEncoders:
    """Only the tokenizer (``tokenizer/``, as SimpleTuner loads it): no encoder model."""
    from transformers import AutoTokenizer

    kwargs = {"revision": options["revision"]} if options.get("revision") else {}
    tokenizer = AutoTokenizer.from_pretrained(model_path, subfolder=TOKENIZER, **kwargs)
    return te.TextEncoders(models={}, tokenizers={TOKENIZER: tokenizer}, device=device)


VALIDATION_PROMPTS = ("validation_prompt", "user_prompt_library", "validation_prompt_library")


def option_problems(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Validation renders with diffusers' OmniGenPipeline, whose constructor builds an
    OmniGenMultiModalProcessor: diffusers only defines it when torchvision is installed. Its
    sampler must run the inverted sigmas, which only the flow-matching Euler scheduler does."""
    import importlib.util

    problems = []
    sampler = options.get("validation_noise_scheduler")
    if sampler not in (None, "euler"):
        problems.append(
            (
                "validation_noise_scheduler",
                f"'{sampler}' cannot sample omnigen: its scheduler runs inverted sigmas "
                "(t from 0 = noise to 1), which only FlowMatchEulerDiscreteScheduler "
                "implements; accepted: euler, or unset",
            )
        )
    wanted = not options.get("validation_disable") and any(
        options.get(k) for k in VALIDATION_PROMPTS
    )
    if wanted and importlib.util.find_spec("torchvision") is None:
        key = next(k for k in VALIDATION_PROMPTS if options.get(k))
        problems.append(
            (
                key,
                "omnigen validation images render with diffusers' OmniGenPipeline, whose "
                "OmniGenMultiModalProcessor needs torchvision, which is not installed: install "
                "the torchvision build matching torch, or set validation_disable",
            )
        )
    return problems


def token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The processor's text-only ids for ``prompt`` (its chat template, BOS included)."""
    from diffusers.pipelines.omnigen.processor_omnigen import OmniGenMultiModalProcessor

    # add_prefix_instruction and process_multi_modal_prompt only use the tokenizer.
    processor = OmniGenMultiModalProcessor.__new__(OmniGenMultiModalProcessor)
    processor.text_tokenizer = tokenizer
    return list(processor.process_multi_modal_prompt(prompt, None)["input_ids"])


def encode_prompts(
    encoders: te.TextEncoders, prompts: list[str], *, options: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """input_ids (B, L) left-padded with PAD_ID and attention_mask (B, L), 1 on real tokens;
    L = tokenizer_max_length or 256."""
    import numpy as np

    length = max_length(options)
    tokenizer = encoders.tokenizers[TOKENIZER]
    ids = np.full((len(prompts), length), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(prompts), length), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        tokens = token_ids(tokenizer, prompt)
        if len(tokens) > length:
            raise ValueError(
                f"OmniGen prompt of {len(tokens)} tokens (with its chat template) exceeds "
                f"tokenizer_max_length {length}: raise tokenizer_max_length or shorten the "
                f"caption {prompt[:60]!r}"
            )
        ids[row, length - len(tokens) :] = tokens
        mask[row, length - len(tokens) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def noise_scheduler_config(model_path: str, options: Mapping[str, Any]) -> dict:
    """The pipeline's scheduler config, checked to be OmniGen's (inverted sigmas on a 0-1
    scale), the convention ``predict`` converts from."""
    config = _scheduler_config(model_path, options)
    if not config.get("invert_sigmas") or int(config.get("num_train_timesteps") or 0) != 1:
        raise ValueError(
            f"{model_path}: scheduler/scheduler_config.json is not OmniGen's "
            "(FlowMatchEulerDiscreteScheduler with invert_sigmas=true, num_train_timesteps=1)"
        )
    return config


def attention_inputs(
    text_mask: torch.Tensor, image_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The collator's (B, S, S) attention mask and (B, S) position ids for left-padded text
    rows ``text_mask`` (B, L), one time token and ``image_tokens`` output-image tokens
    (S = L + 1 + image_tokens).

    Mask: text and time token causal over the row's real tokens, image tokens see every
    real token and each other, padding columns hidden (padding rows see everything, as in
    the collator; nothing reads them). Positions: diffusers' rotary embedding applies the
    first row's position ids to the whole batch, so every row gets those of an unpadded row
    (0..S-1): each row's relative positions are then those it has alone, which is what the
    pipeline computes when its first prompt is the longest.
    """
    import torch

    batch, length = text_mask.shape
    seq = length + 1 + image_tokens
    idx = torch.arange(seq, device=text_mask.device)
    pad = (length - text_mask.sum(dim=1)).view(batch, 1, 1)
    query, key = idx.view(1, seq, 1), idx.view(1, 1, seq)
    visible = key >= pad
    causal = (key <= query) & (key <= length)
    mask = torch.where(query > length, visible, visible & causal)
    mask = mask | (query < pad)
    positions = idx.unsqueeze(0).expand(batch, seq)
    return mask.to(torch.float32), positions


def predict(
    denoiser: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
    *,
    generator: torch.Generator | None = None,
) -> Prediction:
    """The OmniGenPipeline's transformer call for a text-only prompt, on a batch trimmed to
    its longest prompt (the pipeline pads to the longest too)."""
    import torch

    core = unwrap(denoiser)
    device = noisy_latents.device
    text_mask = batch["attention_mask"].to(device=device, dtype=torch.int64)
    ids = batch["input_ids"].to(device=device, dtype=torch.int64)
    keep = int(text_mask.sum(dim=1).max())
    ids, text_mask = ids[:, -keep:], text_mask[:, -keep:]
    p = core.config.patch_size
    height, width = noisy_latents.shape[-2:]
    mask, positions = attention_inputs(text_mask, (height // p) * (width // p))
    out = denoiser(
        hidden_states=noisy_latents.to(core.dtype),
        # sigma (1 = noise) -> OmniGen's t (0 = noise) on its 0-1 scale.
        timestep=1.0 - timesteps.to(device=device, dtype=torch.float32),
        input_ids=ids,
        input_img_latents=[],
        input_image_sizes={},
        attention_mask=mask,
        position_ids=positions,
        return_dict=False,
    )[0]
    return Prediction((-out).to(noisy_latents.dtype))  # x0 - noise -> st_ray's noise - x0

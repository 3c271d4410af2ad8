"""Text-encoding pieces shared by the families: loading frozen CLIP/T5 encoders and running them.

Each family module lists its encoders as ``Slot``s and builds its conditioning from the
helpers here, so the tokenisation and encoder calls match the diffusers pipelines' own
``encode_prompt`` in one place. torch and transformers are imported lazily: the config code
imports the family modules and must stay light.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class Slot:
    """One text encoder of a pipeline folder: its subfolders and transformers model class."""

    name: str  # encoder subfolder, e.g. "text_encoder_2"; also the key in TextEncoders
    tokenizer: str  # tokenizer subfolder, e.g. "tokenizer_2"
    model_class: str  # "CLIPTextModel", "CLIPTextModelWithProjection", "(U)T5EncoderModel"
    # Absent in some checkpoints of the family (the SDXL refiner has no CLIP-L encoder).
    optional: bool = False

    @property
    def is_t5(self) -> bool:
        return "T5" in self.model_class  # T5EncoderModel, UMT5EncoderModel (Wan)


@dataclass
class TextEncoders:
    """A family's tokenizers and frozen text encoders, keyed by the encoder's subfolder name."""

    models: dict[str, Any]
    tokenizers: dict[str, Any]
    device: torch.device

    def __contains__(self, name: str) -> bool:
        return name in self.models


def load(
    model_path: str,
    slots: Sequence[Slot],
    *,
    device: torch.device,
    dtype: torch.dtype,
    options: Mapping[str, Any],
) -> TextEncoders:
    """Load every slot's tokenizer and encoder (eval mode, no grads) onto ``device``."""
    import transformers

    present = _components(model_path, options) if any(s.optional for s in slots) else None
    models: dict[str, Any] = {}
    tokenizers: dict[str, Any] = {}
    for slot in slots:
        if present is not None and slot.optional and slot.name not in present:
            continue
        tok_cls = transformers.T5Tokenizer if slot.is_t5 else transformers.CLIPTokenizer
        tokenizers[slot.name] = tok_cls.from_pretrained(
            **_source(model_path, slot.tokenizer, slot, options)
        )
        model = getattr(transformers, slot.model_class).from_pretrained(
            **_source(model_path, slot.name, slot, options, weights=True), dtype=dtype
        )
        models[slot.name] = model.to(device).eval().requires_grad_(False)
    return TextEncoders(models=models, tokenizers=tokenizers, device=device)


def _source(
    model_path: str, subfolder: str, slot: Slot, options: Mapping[str, Any], weights: bool = False
) -> dict[str, Any]:
    """from_pretrained arguments for one component, honouring the separate T5 location."""
    t5_path = options.get("pretrained_t5_model_name_or_path")
    if slot.is_t5 and t5_path:
        # Like SimpleTuner, the T5 source is read with the family's own subfolder names; a
        # local plain T5 folder (no such subfolder) is read from its top level. revision and
        # variant describe the base model repository, so they are not applied here.
        local = Path(t5_path).expanduser()
        if local.is_dir() and not (local / subfolder).is_dir():
            return {"pretrained_model_name_or_path": str(local)}
        return {"pretrained_model_name_or_path": t5_path, "subfolder": subfolder}
    kwargs: dict[str, Any] = {"pretrained_model_name_or_path": model_path, "subfolder": subfolder}
    if options.get("revision"):
        kwargs["revision"] = options["revision"]
    if weights and options.get("variant"):
        kwargs["variant"] = options["variant"]
    return kwargs


def _components(model_path: str, options: Mapping[str, Any]) -> set[str]:
    """Names of the components model_index.json declares (entries that are not [null, null])."""
    from diffusers import DiffusionPipeline

    kwargs = {"revision": options["revision"]} if options.get("revision") else {}
    index = DiffusionPipeline.load_config(model_path, **kwargs)
    return {k for k, v in index.items() if isinstance(v, list | tuple) and v and v[0] is not None}


# ------------------------------------------------------------------------------ encoding


def clip_encode(encoders: TextEncoders, name: str, prompts: list[str]) -> Any:
    """Run CLIP encoder ``name`` on prompts padded/truncated to the tokenizer's 77 tokens.

    Returns the transformers output with ``hidden_states`` (last_hidden_state, pooler_output
    or text_embeds depending on the class), as every pipeline tokenises CLIP this way.
    """
    tokenizer, model = encoders.tokenizers[name], encoders.models[name]
    inputs = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    # Only encoders configured for it see the mask (none of the released SD/SDXL/SD3 CLIPs).
    mask = inputs.attention_mask if getattr(model.config, "use_attention_mask", False) else None
    return model(
        inputs.input_ids.to(model.device),
        attention_mask=None if mask is None else mask.to(model.device),
        output_hidden_states=True,
    )


def t5_encode(
    encoders: TextEncoders, name: str, prompts: list[str], *, max_length: int, masked: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 last hidden state (B, max_length, D) and the tokenizer's attention mask (B, L).

    ``masked`` passes the mask to the encoder (PixArt does); Flux and SD3 encode unmasked
    and only use the mask downstream.
    """
    tokenizer, model = encoders.tokenizers[name], encoders.models[name]
    inputs = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    mask = inputs.attention_mask.to(model.device)
    embeds = model(inputs.input_ids.to(model.device), attention_mask=mask if masked else None)[0]
    return embeds, mask


def apply_t5_padding(
    embeds: torch.Tensor, mask: torch.Tensor, options: Mapping[str, Any]
) -> torch.Tensor:
    """t5_padding='zero' zeroes the embeddings of padding tokens (SimpleTuner's behaviour for
    Flux, SD3 and PixArt); 'unmodified' keeps the encoder output as the pipelines do."""
    if options.get("t5_padding", "unmodified") == "zero":
        return embeds * mask.unsqueeze(-1).to(embeds.dtype)
    return embeds


def t5_max_length(options: Mapping[str, Any], default: int) -> int:
    value = options.get("tokenizer_max_length")
    return int(value) if value else default


# Set while a trained text encoder encodes captions in the training loop: the families'
# encode_prompts then keep autograd and return the tensors on the device (``live``).
_LIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("st_ray_live_text", default=False)


@contextlib.contextmanager
def live() -> Iterator[None]:
    """Within: ``inference_mode`` is a no-op and ``to_numpy`` returns the tensor itself, so a
    family's ``encode_prompts`` yields differentiable device tensors (text-encoder training)."""
    token = _LIVE.set(True)
    try:
        yield
    finally:
        _LIVE.reset(token)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """CPU numpy copy; bfloat16 (no numpy dtype) becomes float32, integer masks int64.
    Under ``live``: the tensor unchanged."""
    import torch

    if _LIVE.get():
        return tensor
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    elif not tensor.is_floating_point():
        tensor = tensor.to(torch.int64)
    return tensor.numpy()


def inference_mode():
    """Shorthand so family modules need not import torch at module level (a no-op under
    ``live``)."""
    import torch

    return contextlib.nullcontext() if _LIVE.get() else torch.inference_mode()

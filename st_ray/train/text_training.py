"""Text-encoder training (train_text_encoder), for families whose text encoders are CLIP.

The family's encoders are loaded on the worker and trained with the denoiser: a PEFT LoRA on
their attention projections when model_type is 'lora', every weight when 'full'. The
freeze_encoder_* strategy keeps chosen layers frozen, text_encoder_lr gives them their own
optimizer group, and text_encoder_limit (a percentage of the run, as in SimpleTuner) freezes
them for the rest of the run once passed. Captions are encoded in the loop by the trained
encoders (the text cache is not read for them); every encoder of the family trains, so the
cache serves only the other datasets' uses (validation, eval).

Export, in the diffusers layout: a LoRA's text-encoder tensors join
``pytorch_lora_weights.safetensors`` under ``text_encoder.`` / ``text_encoder_2.`` (what
``pipeline.load_lora_weights`` reads); a full fine-tune writes ``text_encoder/`` folders
(checkpoints always, the final output with save_text_encoder).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from st_ray.models import text_encoders as te
from st_ray.train import adapters, lora_export

# CLIP attention projections: the targets of diffusers' DreamBooth LoRA scripts.
CLIP_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def layer_frozen(name: str, strategy: str, before: int, after: int) -> bool:
    """Whether parameter ``name`` (``...encoder.layers.<i>...``) stays frozen: 'before' freezes
    layers below ``before``, 'after' those above ``after``, 'between' those from ``before``
    to ``after`` (the outer layers train). Parameters outside the layer stack train."""
    match = _LAYER.search(name)
    if match is None:
        return False
    index = int(match.group(1))
    if strategy == "before":
        return index < before
    if strategy == "after":
        return index > after
    if strategy == "between":
        return before <= index <= after
    raise ValueError(f"freeze_encoder_strategy {strategy!r} is not one of before, between, after")


def limit_reached(step: int, total_steps: int, limit_percent: float) -> bool:
    """SimpleTuner's rule: frozen once the run's completion (whole percent) exceeds the limit."""
    return total_steps > 0 and int(step / total_steps * 100) > limit_percent


@dataclass
class TextEncoderTraining:
    encoders: te.TextEncoders
    family: Any  # the family's hooks (encode_prompts)
    options: Mapping[str, Any]
    lora: bool
    frozen: bool = False

    @classmethod
    def build(
        cls, plan: Any, family: Any, device: torch.device, dtype: torch.dtype
    ) -> TextEncoderTraining | None:
        options = plan.options
        if not options.get("train_text_encoder"):
            return None
        encoders = family.load_text_encoders(
            plan.model, device=device, dtype=dtype, options=options
        )
        lora = options["model_type"] == "lora"
        for model in encoders.models.values():
            model.requires_grad_(not lora)
            if lora:
                from peft import inject_adapter_in_model

                config = adapters.lora_config(
                    plan.family.name,
                    options,
                    target_modules=list(CLIP_LORA_TARGETS),
                    init_lora_weights=True,  # PiSSA & co. would rewrite the encoder's base
                )
                inject_adapter_in_model(config, model, adapter_name=adapters.ADAPTER)
            strategy = str(options.get("freeze_encoder_strategy") or "after")
            before = int(options.get("freeze_encoder_before") or 0)
            after = int(options.get("freeze_encoder_after") or 0)
            for name, param in model.named_parameters():
                if param.requires_grad and layer_frozen(name, strategy, before, after):
                    param.requires_grad_(False)
            model.train()
        return cls(encoders, family, options, lora)

    @property
    def models(self) -> dict[str, torch.nn.Module]:
        return self.encoders.models

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.models.values() for p in m.parameters() if p.requires_grad]

    def param_group(self, learning_rate: float) -> dict[str, Any]:
        """The encoders' optimizer group: text_encoder_lr, else the run's rate."""
        rate = self.options.get("text_encoder_lr")
        return {"params": self.parameters(), "lr": float(learning_rate if rate is None else rate)}

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """The batch's conditioning from the trained encoders (with autograd while they train)."""
        grad = torch.enable_grad() if not self.frozen else torch.no_grad()
        with te.live(), grad:
            return self.family.encode_prompts(self.encoders, list(captions), options=self.options)

    def after_step(self, step: int, total_steps: int) -> None:
        """Freeze the encoders for good once text_encoder_limit is passed."""
        limit = self.options.get("text_encoder_limit")
        if self.frozen or limit is None or not limit_reached(step, total_steps, float(limit)):
            return
        for model in self.models.values():
            model.requires_grad_(False)
            for param in model.parameters():
                param.grad = None
        self.frozen = True

    def sync_gradients(self) -> None:
        """Average the encoders' gradients over DDP ranks (they are not DDP-wrapped)."""
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return
        for param in self.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad, op=dist.ReduceOp.AVG)

    # --- checkpoints and export

    def save(self, directory: Path, *, final: bool = False) -> list[str]:
        """A LoRA: the encoders' tensors added to the run's LoRA file. Full: one folder per
        encoder (the final output only with save_text_encoder)."""
        if self.lora:
            loras = {name: lora_export.export_lora(m) for name, m in self.models.items()}
            lora_export.add_component_loras(directory / adapters.WEIGHT_NAME, loras)
            return []
        if final and not self.options.get("save_text_encoder"):
            return []
        for name, model in self.models.items():
            model.save_pretrained(directory / name, safe_serialization=True)
        return list(self.models)

    def state(self) -> dict[str, dict[str, torch.Tensor]] | None:
        """A LoRA's tensors for exact resume (a full fine-tune resumes from its folders)."""
        if not self.lora:
            return None
        return {
            name: {k: v.detach().cpu().clone() for k, v in adapters.lora_state_dict(m).items()}
            for name, m in self.models.items()
        }

    def load(self, directory: Path, state: Mapping[str, Mapping[str, torch.Tensor]] | None) -> None:
        for name, model in self.models.items():
            if self.lora:
                adapters.load_lora_state_dict(model, (state or {})[name])
            else:
                loaded = type(model).from_pretrained(directory / name)
                model.load_state_dict(loaded.state_dict())


def option_problems(values: Mapping[str, Any], text_slots: tuple) -> list[tuple[str, str]]:
    """(key, message) for text-encoder training settings that cannot work."""
    if not values.get("train_text_encoder"):
        if values.get("save_text_encoder"):
            return [("save_text_encoder", "save_text_encoder needs train_text_encoder")]
        return []
    key = "train_text_encoder"
    found: list[tuple[str, str]] = []
    if not text_slots or any(not s.model_class.startswith("CLIP") for s in text_slots):
        from st_ray.models.family import FAMILIES

        clip = sorted(
            name
            for name, spec in FAMILIES.items()
            if spec.text_slots and all(s.model_class.startswith("CLIP") for s in spec.text_slots)
        )
        found.append(
            (
                key,
                "train_text_encoder trains CLIP text encoders; this family's are not all "
                f"CLIP (families it works with: {', '.join(clip)})",
            )
        )
    if values.get("model_type") == "lora" and values.get("lora_type") == "lycoris":
        found.append(
            (key, "train_text_encoder works with lora_type 'standard' (PEFT), not lycoris")
        )
    if values.get("lora_format") == "comfyui" and values.get("model_type") == "lora":
        found.append(
            (
                key,
                "train_text_encoder exports text-encoder LoRA keys in the diffusers layout "
                "only: use lora_format 'diffusers'",
            )
        )
    if values.get("optimizer_release_gradients"):
        found.append(
            (
                key,
                "train_text_encoder cannot be combined with optimizer_release_gradients "
                "(only the denoiser's parameters step during backward)",
            )
        )
    for option, value in values.items():
        if re.fullmatch(r"text_encoder_\d_precision", option) and value not in (None, "no_change"):
            found.append(
                (
                    option,
                    f"{option} {value!r} quantises a text encoder that train_text_encoder "
                    "trains: leave it at 'no_change'",
                )
            )
    return found

"""What a family declares for TREAD token routing (``FamilySpec.token_routing``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenRouting:
    """How a DiT's blocks (``hidden_blocks``) take image tokens for TREAD: as ``hidden_states``,
    with ``image_rotary_emb`` "none" (positions in the tokens), "text_first" ((cos, sin) rows:
    text, then image) or "image_first" ((image, text) tables); ``layer_keys``: the denoiser
    config.json keys summing to the block count."""

    rotary: str = "none"
    layer_keys: tuple[str, ...] = ("num_layers",)

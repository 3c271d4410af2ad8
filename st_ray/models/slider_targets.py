"""LoRA target sets of slider_lora_target (SimpleTuner's slider targets, per family)."""

# SimpleTuner's DEFAULT_SLIDER_LORA_TARGET (slider_lora_target): self-attention, the
# projections and convolutions in and out, the time embedding — text paths left alone, as
# Concept Sliders do. Names that match nothing in a family's denoiser are simply not adapted.
SLIDER_TARGETS = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn1.to_qkv",
    "to_qkv",
    "proj_in",
    "proj_out",
    "conv_in",
    "conv_out",
    "time_embedding.linear_1",
    "time_embedding.linear_2",
)
# The slider set of the families whose attention mixes image and text streams (SimpleTuner's
# SLIDER_LORA_TARGET for Flux, AuraFlow, SD3, HiDream, DeepFloyd): image-side projections only.
SLIDER_ATTENTION_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")

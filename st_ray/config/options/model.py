"""Options that choose, load, quantise and configure the base model and its text encoders."""

from st_ray.config.schema import Json, opt

GROUP = "Model, precision and memory"

_PRECISIONS = (
    "no_change",
    "int8-quanto",
    "int4-quanto",
    "int2-quanto",
    "int8-torchao",
    "nf4-bnb",
    "int4-torchao",
    "fp8-quanto",
    "fp8uz-quanto",
    "fp8-torchao",
)

_FLASH = "needs the flash-attn kernels, which st_ray does not integrate yet"
_FLASH3 = "needs the FlashAttention 3 kernels (Hopper only), which st_ray does not integrate yet"
_SAGE = "needs SageAttention, which st_ray does not integrate yet"

OPTIONS = [
    # --- model selection ---
    opt(
        "model_family",
        str,
        None,
        "Architecture to train: one of the families in st_ray/models (or a plugin package, see "
        "ST_RAY_FAMILY_PACKAGES). Decides which pipeline, text encoders, VAE and noise "
        "schedule are loaded.",
        # The family names are filled in by st_ray.plan from the discovered families.
        choices=(),
        required=True,
    ),
    opt(
        "model_flavour",
        str,
        None,
        "Named variant of the chosen family (e.g. 'dev' or 'schnell'). Picks the "
        "default checkpoint and family-specific settings; unset uses the family's default.",
        caches=("text",),
    ),
    opt(
        "model_type",
        str,
        "lora",
        "'lora' trains a small adapter on top of frozen base weights (see lora_type); 'full' "
        "updates every weight of the denoiser and needs far more memory.",
        choices=("full", "lora"),
    ),
    opt(
        "prediction_type",
        str,
        None,
        "What the denoiser is trained to predict. Leave unset to use the family's native "
        "objective; override only for checkpoints trained differently (e.g. a v-prediction "
        "fine-tune of an epsilon model).",
        choices=(None, "epsilon", "v_prediction", "sample", "flow_matching"),
    ),
    # --- checkpoint locations ---
    opt(
        "pretrained_model_name_or_path",
        str,
        None,
        "Hugging Face repo id or local path of the base model. Unset uses the flavour's default "
        "repository; or a single-file .safetensors checkpoint.",
    ),
    opt(
        "pretrained_transformer_model_name_or_path",
        str,
        None,
        "Load the transformer (denoiser) from a different repo or path than the rest of the "
        "pipeline, e.g. a fine-tuned transformer.",
    ),
    opt(
        "pretrained_transformer_subfolder",
        str,
        "transformer",
        "Subfolder of the transformer source that holds its weights; use 'none' for a repo "
        "whose weights sit at the top level.",
    ),
    opt(
        "pretrained_unet_model_name_or_path",
        str,
        None,
        "Load the UNet (of the UNet families) from a different repo or path than "
        "the rest of the pipeline.",
    ),
    opt(
        "pretrained_unet_subfolder",
        str,
        "unet",
        "Subfolder of the UNet source that holds its weights; use 'none' for a repo whose "
        "weights sit at the top level.",
    ),
    opt(
        "pretrained_vae_model_name_or_path",
        str,
        None,
        "Load the VAE from another repo or path instead of the one bundled with the base "
        "model, e.g. an fp16-safe fine-tune of the VAE for training in fp16.",
    ),
    opt(
        "pretrained_t5_model_name_or_path",
        str,
        None,
        "Load the T5 text encoder from a separate repo or path, e.g. to share one local T5 "
        "copy between the runs of several T5-conditioned families instead of downloading it per "
        "model.",
        caches=("text",),
    ),
    opt(
        "pretrained_gemma_model_name_or_path",
        str,
        None,
        "Load the Gemma text encoder (of the Gemma-conditioned families) from a separate repo or "
        "path instead of "
        "the base model's repository.",
        caches=("text",),
    ),
    opt(
        "revision",
        str,
        None,
        "Git branch, tag or commit of the Hub repository to download the base model from.",
        caches=("text",),
    ),
    opt(
        "variant",
        str,
        None,
        "Weight file variant to load from the Hub repository, e.g. 'fp16' picks "
        "*.fp16.safetensors files.",
        caches=("text",),
    ),
    # --- quantisation and dtypes ---
    opt(
        "base_model_precision",
        str,
        "no_change",
        "Quantise the denoiser's frozen weights to save memory (LoRA/LyCORIS runs). "
        "'no_change' keeps them in the training dtype; int8-quanto is the safest choice. "
        "int4-torchao needs a CUDA GPU, fp8-torchao a GPU of compute capability 8.9+ (or CPU).",
        choices=_PRECISIONS,
    ),
    opt(
        "text_encoder_1_precision",
        str,
        "no_change",
        "Quantise the first text encoder; only affects memory while text embeddings are cached.",
        choices=_PRECISIONS,
        caches=("text",),
    ),
    opt(
        "text_encoder_2_precision",
        str,
        "no_change",
        "Quantise the second text encoder (if the family has one), e.g. a T5.",
        choices=_PRECISIONS,
        caches=("text",),
    ),
    opt(
        "text_encoder_3_precision",
        str,
        "no_change",
        "Quantise the third text encoder (if the family has one), e.g. a T5.",
        choices=_PRECISIONS,
        caches=("text",),
    ),
    opt(
        "text_encoder_4_precision",
        str,
        "no_change",
        "Quantise the fourth text encoder (if the family has one), e.g. a Llama.",
        choices=_PRECISIONS,
        caches=("text",),
    ),
    opt(
        "quantize_via",
        str,
        "accelerator",
        "Where quantisation happens: 'accelerator' is fastest but may run out of GPU memory on "
        "large models, 'cpu' is slower and safer, 'pipeline' lets Diffusers quantise on load.",
        choices=("cpu", "accelerator", "pipeline"),
    ),
    opt(
        "quantization_config",
        Json,
        None,
        "Diffusers quantization_config overrides used with quantize_via=pipeline, keyed by "
        "component ('unet', 'transformer', 'text_encoder' or 'default').",
    ),
    opt(
        "base_model_default_dtype",
        str,
        "bf16",
        "Dtype of the base model weights that are not quantised when a quantised precision is "
        "used; fp32 costs memory but can help numerically fragile models.",
        choices=("bf16", "fp32"),
    ),
    opt(
        "vae_dtype",
        str,
        "bf16",
        "Dtype the VAE runs in while encoding latents. Use fp32 for VAEs that produce NaNs in "
        "half precision; 'default' keeps the checkpoint's own dtype.",
        choices=("default", "fp32", "fp16", "bf16"),
    ),
    # --- attention and compute ---
    opt(
        "attention_mechanism",
        str,
        "diffusers",
        "Attention kernel. 'diffusers' uses PyTorch SDPA; 'cudnn' and the native-* values pin "
        "one SDPA backend (native-math is the deterministic one).",
        choices=(
            "diffusers",
            "xformers",
            "flash-attn",
            "flash-attn-2",
            "flash-attn-3",
            "flash-attn-3-varlen",
            "flex",
            "cudnn",
            "native-efficient",
            "native-flash",
            "native-math",
            "native-npu",
            "native-xla",
            "sla",
            "sageattention",
            "sageattention-int8-fp16-triton",
            "sageattention-int8-fp16-cuda",
            "sageattention-int8-fp8-cuda",
        ),
        unsupported_values={
            "xformers": "needs xformers, which st_ray does not integrate yet",
            "flash-attn": _FLASH,
            "flash-attn-2": _FLASH,
            "flash-attn-3": _FLASH3,
            "flash-attn-3-varlen": _FLASH3,
            "flex": "needs compiled PyTorch FlexAttention kernels, which st_ray does not "
            "integrate yet",
            "sla": "needs the SLA (sparse-linear attention) package, which st_ray does not "
            "integrate yet",
            "sageattention": _SAGE,
            "sageattention-int8-fp16-triton": _SAGE,
            "sageattention-int8-fp16-cuda": _SAGE,
            "sageattention-int8-fp8-cuda": _SAGE,
            "native-npu": "the SDPA kernel of Ascend NPUs; st_ray runs on CUDA GPUs and CPUs",
            "native-xla": "the SDPA kernel of XLA devices (TPU); st_ray runs on CUDA GPUs and CPUs",
        },
    ),
    opt(
        "sageattention_usage",
        str,
        "inference",
        "Whether SageAttention is used for training, validation inference, or both.",
        choices=("training", "inference", "training+inference"),
        unsupported=_SAGE,
    ),
    opt(
        "fuse_qkv_projections",
        bool,
        False,
        "Fuse the query/key/value projections of attention blocks so FlashAttention 3 can run "
        "them as one matmul.",
        aliases=("fused_qkv_projections",),
        unsupported="needs FlashAttention 3 on Hopper GPUs, which st_ray does not integrate yet",
    ),
    opt(
        "disable_tf32",
        bool,
        False,
        "Run fp32 matmuls and convolutions in full IEEE precision instead of TF32. Slower on "
        "Ampere and newer GPUs; use it only when debugging numerical differences.",
    ),
    opt(
        "unet_attention_slice",
        bool,
        False,
        "Compute UNet attention in slices to lower peak memory at the cost of speed (mostly "
        "useful on Apple MPS).",
        unsupported="UNet attention slicing is not implemented by st_ray yet",
    ),
    # --- memory: checkpointing and offload ---
    opt(
        "gradient_checkpointing",
        bool,
        True,
        "Recompute activations during the backward pass instead of storing them: much less "
        "GPU memory for roughly 20% slower steps.",
    ),
    opt(
        "gradient_checkpointing_interval",
        int,
        None,
        "Checkpoint only every N-th block, trading back some memory for speed.",
        minimum=1,
    ),
    opt(
        "gradient_checkpointing_backend",
        str,
        "torch",
        "Implementation of gradient checkpointing: 'torch' recomputes activations, 'unsloth' "
        "offloads them to CPU memory instead.",
        choices=("torch", "unsloth"),
    ),
    opt(
        "vae_enable_slicing",
        bool,
        False,
        "Encode a batch through the VAE one image at a time to lower peak memory while caching "
        "latents.",
    ),
    opt(
        "vae_enable_tiling",
        bool,
        False,
        "Encode large images through the VAE in overlapping tiles to lower peak memory while "
        "caching latents.",
    ),
    opt(
        "accelerator_cache_clear_interval",
        int,
        None,
        "Empty the CUDA memory cache every N steps to fight fragmentation on tight GPUs; unset "
        "or 0 never clears it.",
        minimum=0,
    ),
    opt(
        "offload_during_startup",
        bool,
        False,
        "Keep the text encoders on the CPU while latents are cached, so models with large text "
        "encoders do not run out of GPU memory at startup. Slows startup down.",
        no_effect="text encoders and the VAE live only in the caching stage's actors",
    ),
    opt(
        "offload_during_save",
        bool,
        False,
        "Move the model to the CPU while a checkpoint is written, for quantised models whose "
        "state_dict serialisation would otherwise run out of GPU memory.",
        unsupported="offloading the model while checkpoints are saved is not implemented by "
        "st_ray yet",
    ),
    opt(
        "fully_unload_text_encoder",
        bool,
        False,
        "Free the text encoders completely once text embeddings are cached instead of parking "
        "them on the CPU.",
        no_effect="text encoders live only in the caching stage's actors",
    ),
    # --- text encoder training ---
    opt(
        "train_text_encoder",
        bool,
        False,
        "Also train the text encoder(s) together with the denoiser (only worthwhile for SD 1.x "
        "and 2.x).",
    ),
    opt(
        "text_encoder_lr",
        float,
        None,
        "Learning rate for the text encoder when it is trained; unset uses learning_rate.",
        minimum=0,
    ),
    opt(
        "text_encoder_limit",
        int,
        100,
        "How long the text encoder may be trained before it is frozen again, to keep it "
        "from degrading.",
        minimum=0,
    ),
    opt(
        "freeze_encoder_before",
        int,
        12,
        "Text encoder layer index below which layers stay frozen (strategies 'before' and "
        "'between').",
        minimum=0,
    ),
    opt(
        "freeze_encoder_after",
        int,
        17,
        "Text encoder layer index above which layers stay frozen (strategies 'after' and "
        "'between').",
        minimum=0,
    ),
    opt(
        "freeze_encoder_strategy",
        str,
        "after",
        "Which text encoder layers to freeze relative to freeze_encoder_before/after.",
        choices=("before", "between", "after"),
    ),
    opt(
        "save_text_encoder",
        bool,
        False,
        "Write the (trained) text encoder into the final pipeline save.",
    ),
    opt(
        "layer_freeze_strategy",
        str,
        "none",
        "Which denoiser parameters to freeze in a full fine-tune: 'bitfit' trains only the biases.",
        choices=("none", "bitfit"),
        unsupported_values={"bitfit": "BitFit (bias-only) training is not supported by st_ray yet"},
    ),
    # --- family-specific ---
    opt(
        "t5_padding",
        str,
        "unmodified",
        "How padding tokens of T5 embeddings are treated: 'zero' zeroes them, 'unmodified' "
        "keeps the encoder's output as is.",
        choices=("zero", "unmodified"),
        caches=("text",),
    ),
    # --- reproducibility ---
    opt(
        "seed",
        int,
        None,
        "Random seed for noise, timesteps and data order. Unset gives a different run every time.",
        minimum=0,
        maximum=2**31 - 1,
    ),
    opt(
        "seed_for_each_device",
        bool,
        True,
        "Derive a distinct seed per worker from seed, so GPUs do not draw identical noise and "
        "timesteps. Turn off only to reproduce single-seed behaviour.",
    ),
]

"""Options for LoRA and LyCORIS adapter training (model_type: lora)."""

from st_ray.config.schema import Json, opt

GROUP = "LoRA and LyCORIS adapters"


OPTIONS = [
    # --- adapter kind and file format ---
    opt(
        "lora_type",
        str,
        "standard",
        "'standard' trains a PEFT LoRA, which most tools can load; 'lycoris' trains the LyCORIS "
        "algorithm described by lycoris_config (LoKr, LoHa, ...).",
        choices=("standard", "lycoris"),
    ),
    opt(
        "lora_format",
        str,
        "diffusers",
        "Key layout of saved LoRA files: 'diffusers' is the PEFT/Diffusers layout, 'comfyui' "
        "writes ComfyUI-style keys with explicit alpha tensors.",
        choices=("diffusers", "comfyui"),
    ),
    opt(
        "peft_lora_mode",
        str,
        "standard",
        "Variant of PEFT LoRA: 'standard' is the usual A/B low-rank pair; 'singlora' uses a "
        "single symmetric matrix.",
        choices=("standard", "singlora"),
        unsupported_values={
            "singlora": "SingLoRA is not supported: no maintained package provides it for PEFT"
        },
    ),
    # --- PEFT LoRA shape ---
    opt(
        "lora_rank",
        int,
        16,
        "Rank (dimension) of the LoRA matrices. Higher ranks learn more detail but make larger "
        "files and overfit faster; 4-32 suits styles, 64+ complex subjects.",
        minimum=1,
    ),
    opt(
        "lora_alpha",
        float,
        None,
        "LoRA scaling numerator; the update is scaled by alpha / rank. Unset uses the rank, so "
        "the scale is 1.",
        minimum=0,
    ),
    opt(
        "lora_dropout",
        float,
        0.1,
        "Probability of dropping LoRA inputs during training, a mild regulariser against "
        "overfitting; 0 disables it.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "lora_init_type",
        str,
        "default",
        "How the LoRA weights are initialised: 'default' (zero B matrix), 'gaussian', or the "
        "data-aware 'loftq', 'olora' and 'pissa' schemes (slower to start).",
        choices=("default", "gaussian", "loftq", "olora", "pissa"),
    ),
    opt(
        "use_dora",
        bool,
        False,
        "Train DoRA (weight-decomposed LoRA), which learns magnitude and direction separately; "
        "often better quality for slower steps. For LyCORIS set it in lycoris_config instead.",
    ),
    # --- which layers to adapt ---
    opt(
        "peft_lora_target_modules",
        Json,
        None,
        "Explicit list of module names to adapt with PEFT LoRA, overriding the family's preset "
        "targets (and flux_lora_target).",
    ),
    # --- initial weights ---
    opt(
        "init_lora",
        str,
        None,
        "Path of an existing LoRA or LyCORIS .safetensors file to start training from instead "
        "of fresh adapter weights.",
    ),
    # --- LyCORIS ---
    opt(
        "lycoris_config",
        str,
        "config/lycoris_config.json",
        "Path to the JSON file that defines the LyCORIS algorithm, its factors and module "
        "targets. Only read when lora_type is 'lycoris'.",
    ),
    opt(
        "init_lokr_norm",
        float,
        None,
        "LyCORIS LoKr: initialise the second factor with small random values of this scale "
        "instead of zeros (e.g. 1e-3), which can speed up early learning.",
        minimum=0,
    ),
]

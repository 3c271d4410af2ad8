"""Experimental and specialised training methods, most of which st_ray does not implement yet."""

from st_ray.config.schema import Json, opt

_NO_CONTROL = "control-signal (channel-concatenated) training is not implemented in st_ray"
_NO_VIDEO = "st_ray trains image models only; video and audio options are not implemented"
_NO_DISTILL = "model distillation is not implemented in st_ray"
_NO_GROUP_OFFLOAD = "diffusers group offloading is not implemented in st_ray"
_NO_MUSUBI = "Musubi-style block swapping is not implemented in st_ray"
_NO_RAMTORCH = "RamTorch CPU-streamed layers are not implemented in st_ray"
_NO_REFINER = "refiner / mixture-of-experts refiner training is not implemented in st_ray"

GROUP = "Experimental and specialised methods"

OPTIONS = [
    # Safety override
    opt(
        "i_know_what_i_am_doing",
        bool,
        False,
        "Allow combinations and values that are normally refused as unsafe or unsupported. "
        "Use only when you understand the consequences.",
        no_effect="st_ray has no safety limits that this unlocks",
    ),
    # ControlNet and control training
    opt(
        "controlnet",
        bool,
        False,
        "Train a ControlNet (full, or a LoRA on it with model_type 'lora') beside the frozen "
        "denoiser, on control images from conditioning datasets (conditioning_type "
        "'controlnet'); saved in diffusers layout under controlnet/. UNet families only.",
    ),
    opt(
        "control",
        bool,
        False,
        "Train with channel-concatenated control inputs.",
        unsupported=_NO_CONTROL,
    ),
    opt(
        "controlnet_custom_config",
        Json,
        None,
        "JSON object of ControlNet architecture settings for the ControlNet made from the "
        "denoiser (ControlNetModel.from_unet's conditioning_embedding_out_channels, "
        "conditioning_channels, controlnet_conditioning_channel_order).",
    ),
    opt(
        "controlnet_model_name_or_path",
        str,
        None,
        "Existing ControlNet weights (Hub id or path) to start from instead of a copy of the "
        "denoiser's encoder.",
    ),
    opt(
        "conditioning_multidataset_sampling",
        str,
        "random",
        "With several conditioning datasets, use one picked at random per sample ('random') or "
        "all of them together ('combined').",
        choices=("combined", "random"),
    ),
    # Text encoder internals
    opt(
        "custom_text_encoder_intermediary_layers",
        Json,
        None,
        "JSON list of text-encoder hidden layers to extract (multi-layer conditioning), e.g. "
        "[10, 20, 30]. "
        "Changing it invalidates cached text embeddings.",
        unsupported="custom text-encoder layer selection is not implemented in st_ray",
    ),
    # Video models
    opt(
        "framerate",
        int,
        None,
        "Frames per second video datasets' clips are resampled to before their frames are "
        "taken (unset: each clip's own rate).",
        minimum=1,
    ),
    opt(
        "validation_num_video_frames",
        int,
        None,
        "Number of frames rendered for video validations (saved as mp4 and a gif preview); "
        "unset: the video family's default.",
        minimum=1,
    ),
    opt(
        "validation_audio_only",
        bool,
        False,
        "For audio-video models, render only audio during validation.",
        unsupported=_NO_VIDEO,
    ),
    opt(
        "vae_enable_patch_conv",
        bool,
        False,
        "Run the HunyuanVideo VAE's 3D convolutions in patches to lower peak VRAM.",
        unsupported=_NO_VIDEO,
    ),
    opt(
        "ltx_train_mode",
        str,
        "i2v",
        "Whether LTX video datasets default to text-to-video or image-to-video training.",
        choices=("t2v", "i2v"),
        unsupported=_NO_VIDEO,
    ),
    opt(
        "ltx_i2v_prob",
        float,
        0.1,
        "Share of LTX training samples treated as image-to-video.",
        minimum=0,
        maximum=1,
        unsupported=_NO_VIDEO,
    ),
    opt(
        "ltx_partial_noise_fraction",
        float,
        0.05,
        "Amount of noise added to the conditioning frame in LTX image-to-video training.",
        minimum=0,
        maximum=1,
        unsupported=_NO_VIDEO,
    ),
    opt(
        "ltx_protect_first_frame",
        bool,
        False,
        "Keep the first LTX frame noise-free so it acts as a clean conditioning frame.",
        unsupported=_NO_VIDEO,
    ),
    # CREPA (cross-frame representation alignment)
    opt(
        "crepa_enabled",
        bool,
        False,
        "Add the CREPA loss: -crepa_lambda x the cosine similarity between a denoiser block's "
        "projected hidden states and a frozen DINOv2 encoder's features of the image (and of "
        "neighbouring frames for video), logged as crepa_loss. The training latents are "
        "decoded with the VAE in the step; the projection head trains with the adapter and is "
        "kept in checkpoints. Families that expose their block list only.",
    ),
    opt(
        "crepa_block_index",
        int,
        8,
        "Denoiser block whose hidden states CREPA aligns, 0-based (UNets count down blocks, the "
        "mid block, then up blocks).",
        minimum=0,
    ),
    opt(
        "crepa_lambda",
        float,
        0.5,
        "Weight of the CREPA loss relative to the main loss.",
        minimum=0,
    ),
    opt(
        "crepa_adjacent_distance",
        int,
        1,
        "Frame distance d of the neighbours each frame is aligned with.",
        minimum=0,
    ),
    opt(
        "crepa_adjacent_tau",
        float,
        1.0,
        "Temperature of the exponential weight that fades alignment with frame distance.",
        minimum=0,
    ),
    opt(
        "crepa_cumulative_neighbors",
        bool,
        False,
        "Align with every frame from distance 1 up to d instead of only those exactly d away.",
    ),
    opt(
        "crepa_normalize_by_frames",
        bool,
        True,
        "Divide the CREPA loss by the frame count so clip length does not change its scale.",
    ),
    opt(
        "crepa_spatial_align",
        bool,
        True,
        "Interpolate token grids when transformer and encoder resolutions differ; off uses "
        "global pooling instead.",
    ),
    opt(
        "crepa_model",
        str,
        "dinov2_vitg14",
        "Pretrained DINOv2 image encoder that supplies CREPA's target features: "
        "dinov2_vits14/vitb14/vitl14/vitg14 (the Hub's facebook/dinov2-* weights), or a Hub id "
        "or folder that transformers' AutoModel loads.",
    ),
    opt(
        "crepa_encoder_frames_batch_size",
        int,
        -1,
        "Frames passed through the image encoder at once; zero or negative means all frames.",
    ),
    opt(
        "crepa_encoder_image_size",
        int,
        518,
        "Input resolution of the CREPA image encoder.",
        minimum=64,
    ),
    opt(
        "crepa_use_backbone_features",
        bool,
        False,
        "Align with a deeper block of the model itself instead of an external image encoder.",
    ),
    opt(
        "crepa_teacher_block_index",
        int,
        None,
        "Teacher block when crepa_use_backbone_features is on. Unset: crepa_block_index.",
        minimum=0,
    ),
    opt(
        "crepa_scheduler",
        str,
        "constant",
        "How the CREPA weight decays over training.",
        choices=("constant", "linear", "cosine", "polynomial"),
    ),
    opt(
        "crepa_warmup_steps",
        int,
        0,
        "Steps over which the CREPA weight ramps up linearly from zero to crepa_lambda.",
        minimum=0,
    ),
    opt(
        "crepa_decay_steps",
        int,
        0,
        "Step at which the decay reaches crepa_lambda_end (counted from step 0, warmup "
        "included, as in SimpleTuner); 0 decays over the whole run.",
        minimum=0,
    ),
    opt(
        "crepa_lambda_end",
        float,
        0.0,
        "CREPA weight reached at the end of the decay.",
        minimum=0,
    ),
    opt(
        "crepa_power",
        float,
        1.0,
        "Exponent of the polynomial decay (1 is linear).",
        minimum=0,
    ),
    opt(
        "crepa_cutoff_step",
        int,
        0,
        "Global step after which CREPA is switched off; 0 never switches it off.",
        minimum=0,
    ),
    opt(
        "crepa_similarity_threshold",
        float,
        None,
        "Switch CREPA off once the moving average of its similarity reaches this value. Unset: "
        "no similarity cutoff.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "crepa_similarity_ema_decay",
        float,
        0.99,
        "Decay of the moving average used for the similarity cutoff.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "crepa_threshold_mode",
        str,
        "permanent",
        "After the similarity cutoff fires, keep CREPA off for good or turn it back on if "
        "similarity drops.",
        choices=("permanent", "recoverable"),
    ),
    # LayerSync
    opt(
        "layersync_enabled",
        bool,
        False,
        "Add the LayerSync loss: -layersync_lambda x the mean cosine similarity between a "
        "student block's hidden states and a detached teacher block's of the same denoiser "
        "(logged as layersync_loss). Families that expose their block list only.",
    ),
    opt(
        "layersync_student_block",
        int,
        None,
        "The student block (required with LayerSync): a 1-based depth as in the LayerSync "
        "paper (n is the n-th block); 0 is the first block. UNets count down blocks, the mid "
        "block, then up blocks.",
        minimum=0,
    ),
    opt(
        "layersync_teacher_block",
        int,
        None,
        "The teacher block, indexed like layersync_student_block; its hidden states must have "
        "the student's shape. Unset: the student block.",
        minimum=0,
    ),
    opt(
        "layersync_lambda",
        float,
        0.2,
        "Weight of the LayerSync term; must be above zero when LayerSync is enabled.",
        minimum=0,
    ),
    # Scheduled sampling (rollout)
    opt(
        "scheduled_sampling_max_step_offset",
        int,
        0,
        "Longest rollout, in timesteps, the model runs on its own predictions (no gradients) "
        "before the training step; 0 disables scheduled sampling. Flow-matching families only "
        "(epsilon / v-prediction rollouts need SimpleTuner's skrample solvers).",
        minimum=0,
    ),
    opt(
        "scheduled_sampling_strategy",
        str,
        "uniform",
        "How rollout lengths are drawn: evenly, favouring short ones, or favouring long ones.",
        choices=("uniform", "biased_early", "biased_late"),
    ),
    opt(
        "scheduled_sampling_probability",
        float,
        0.0,
        "Chance that a sample gets a rollout (when scheduled_sampling_ramp_steps is 0).",
        minimum=0,
        maximum=1,
    ),
    opt(
        "scheduled_sampling_prob_start",
        float,
        0.0,
        "Rollout probability at the start of the ramp (and before start_step); 0 falls back "
        "to scheduled_sampling_probability, as in SimpleTuner.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "scheduled_sampling_prob_end",
        float,
        0.5,
        "Rollout probability at the end of the ramp; 0 falls back to "
        "scheduled_sampling_probability, as in SimpleTuner.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "scheduled_sampling_ramp_steps",
        int,
        0,
        "Steps over which the rollout probability moves from start to end; 0 means no ramp.",
        minimum=0,
    ),
    opt(
        "scheduled_sampling_start_step",
        int,
        0,
        "Global step at which the ramp begins.",
        minimum=0,
    ),
    opt(
        "scheduled_sampling_ramp_shape",
        str,
        "linear",
        "Shape of the probability ramp.",
        choices=("linear", "cosine"),
    ),
    opt(
        "scheduled_sampling_sampler",
        str,
        "unipc",
        "Solver used for the rollout steps of epsilon / v-prediction models in SimpleTuner; "
        "flow-matching rollouts step with Euler one timestep at a time whatever it says (as "
        "in SimpleTuner), and st_ray notes a non-default value.",
        choices=("unipc", "euler", "dpm", "rk4"),
    ),
    opt(
        "scheduled_sampling_order",
        int,
        2,
        "Order of the rollout solver (epsilon / v-prediction rollouts; no effect on "
        "flow-matching ones, as in SimpleTuner; st_ray notes a non-default value).",
        minimum=1,
    ),
    opt(
        "scheduled_sampling_reflexflow",
        bool,
        None,
        "ReflexFlow with scheduled sampling on flow-matching models: the loss is weighted by "
        "1 + alpha x the exposure bias (clean minus rolled-out prediction, L1-normalised), "
        "times beta2, plus beta1 x the anti-drift term (logged as reflexflow_anti_drift). "
        "Unset: on whenever scheduled sampling is active on such a model.",
    ),
    opt(
        "scheduled_sampling_reflexflow_alpha",
        float,
        1.0,
        "Scale of ReflexFlow's exposure-bias frequency weighting.",
        minimum=0,
    ),
    opt(
        "scheduled_sampling_reflexflow_beta1",
        float,
        10.0,
        "Weight of ReflexFlow's directional anti-drift term.",
        minimum=0,
    ),
    opt(
        "scheduled_sampling_reflexflow_beta2",
        float,
        1.0,
        "Weight of ReflexFlow's frequency-compensated loss term.",
        minimum=0,
    ),
    # Alternative objectives and distillation
    opt(
        "diff2flow_enabled",
        bool,
        False,
        "Enable the diffusion-to-flow bridge for epsilon- or v-prediction models (not for "
        "flow-matching families). On its own it changes nothing: set diff2flow_loss too.",
    ),
    opt(
        "diff2flow_loss",
        bool,
        False,
        "With diff2flow_enabled: convert the model's epsilon / v prediction into a flow vector "
        "field and train it with the mean squared error against the flow target "
        "(noise - latents) instead of the native target (no Min-SNR weighting, loss_type l2).",
    ),
    opt(
        "distillation_method",
        str,
        None,
        "Distillation technique to train with. Unset: ordinary training.",
        choices=("lcm", "dcm", "dmd", "perflow"),
        unsupported=_NO_DISTILL,
    ),
    opt(
        "distillation_config",
        Json,
        None,
        "Settings for the chosen distillation method, as inline JSON or a JSON file.",
        unsupported=_NO_DISTILL,
    ),
    opt(
        "tread_config",
        Json,
        None,
        'TREAD token routing during training, as in SimpleTuner: {"routes": '
        '[{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}. '
        "selection_ratio of the image tokens (0 <= r < 1, drawn at random) skip blocks "
        "start..end (inclusive, negative from the end) and rejoin unchanged after them; text "
        "tokens are never routed; validation and export are not routed. DiT families whose "
        "blocks take the image tokens on their own only (the README lists them).",
    ),
    # Adapter variants
    opt(
        "slider_lora_target",
        bool,
        False,
        "Aim a standard PEFT LoRA at slider-friendly modules instead of the family preset: "
        "self-attention, proj_in/out, conv_in/out and the time embedding (families with joint "
        "image/text attention: the attention projections), SimpleTuner's per-family sets.",
    ),
    opt(
        "singlora_ramp_up_steps",
        int,
        0,
        "Steps over which a SingLoRA adapter's contribution ramps up.",
        minimum=0,
        unsupported="SingLoRA is not implemented in st_ray",
    ),
    # refiner / mixture-of-experts
    opt(
        "refiner_training",
        bool,
        False,
        "Train a refiner stage of a mixture-of-experts pair on part of the noise schedule.",
        unsupported=_NO_REFINER,
    ),
    opt(
        "refiner_training_invert_schedule",
        bool,
        False,
        "Train the refiner on the opposite end of the noise schedule.",
        unsupported=_NO_REFINER,
    ),
    opt(
        "refiner_training_strength",
        float,
        0.2,
        "Fraction of the noise schedule the refiner is trained on.",
        minimum=0,
        maximum=1,
        unsupported=_NO_REFINER,
    ),
    opt(
        "sdxl_refiner_uses_full_range",
        bool,
        False,
        "Train the refiner model across every timestep instead of only its usual range.",
        unsupported=_NO_REFINER,
    ),
    # Memory offloading
    opt(
        "enable_group_offload",
        bool,
        False,
        "Park groups of model blocks in CPU memory (or on disk) between uses to cut peak VRAM.",
        unsupported=_NO_GROUP_OFFLOAD,
    ),
    opt(
        "group_offload_type",
        str,
        "block_level",
        "Offload granularity: whole blocks (balanced) or individual layers (least VRAM).",
        choices=("block_level", "leaf_level"),
        unsupported=_NO_GROUP_OFFLOAD,
    ),
    opt(
        "group_offload_blocks_per_group",
        int,
        1,
        "Blocks moved together with block-level offloading; more is faster but uses more VRAM.",
        minimum=1,
        unsupported=_NO_GROUP_OFFLOAD,
    ),
    opt(
        "group_offload_use_stream",
        bool,
        False,
        "Overlap offload transfers with compute on a separate CUDA stream.",
        unsupported=_NO_GROUP_OFFLOAD,
    ),
    opt(
        "group_offload_to_disk_path",
        str,
        None,
        "Directory to offload parameters to instead of CPU memory; use fast local storage.",
        unsupported=_NO_GROUP_OFFLOAD,
    ),
    opt(
        "musubi_blocks_to_swap",
        int,
        0,
        "Keep the last N transformer blocks in CPU memory and stream their weights in during "
        "the forward pass; 0 disables it.",
        minimum=0,
        unsupported=_NO_MUSUBI,
    ),
    opt(
        "musubi_block_swap_device",
        str,
        "cpu",
        "Device that holds the swapped-out blocks.",
        unsupported=_NO_MUSUBI,
    ),
    opt(
        "ramtorch",
        bool,
        False,
        "Replace Linear layers with RamTorch versions whose weights live in CPU memory and are "
        "streamed to the GPU when needed.",
        unsupported=_NO_RAMTORCH,
    ),
    opt(
        "ramtorch_target_modules",
        str,
        None,
        "Comma-separated glob patterns limiting which modules RamTorch converts. Unset: all "
        "Linear layers.",
        unsupported=_NO_RAMTORCH,
    ),
    opt(
        "ramtorch_transformer_percent",
        float,
        100.0,
        "Percentage of the transformer's eligible layers converted to RamTorch.",
        minimum=0,
        maximum=100,
        unsupported=_NO_RAMTORCH,
    ),
    opt(
        "ramtorch_text_encoder",
        bool,
        False,
        "Also convert the text encoders' Linear layers to RamTorch.",
        unsupported=_NO_RAMTORCH,
    ),
    opt(
        "ramtorch_text_encoder_percent",
        float,
        100.0,
        "Percentage of the text encoders' eligible layers converted when ramtorch_text_encoder "
        "is on.",
        minimum=0,
        maximum=100,
        unsupported=_NO_RAMTORCH,
    ),
    opt(
        "ramtorch_vae",
        bool,
        False,
        "Convert the Linear layers of the VAE's mid block to RamTorch.",
        unsupported=_NO_RAMTORCH,
    ),
    opt(
        "ramtorch_controlnet",
        bool,
        False,
        "Convert a ControlNet's Linear layers to RamTorch.",
        unsupported=_NO_RAMTORCH,
    ),
    opt(
        "ramtorch_disable_sync_hooks",
        bool,
        False,
        "Drop the CUDA synchronisation hooks after RamTorch layers; faster, but can give "
        "non-deterministic or wrong results.",
        unsupported=_NO_RAMTORCH,
    ),
    opt(
        "ramtorch_disable_extensions",
        bool,
        True,
        "Limit RamTorch to Linear layers, leaving Embedding, norm and conv layers alone.",
        unsupported=_NO_RAMTORCH,
    ),
    opt(
        "offload_param_path",
        str,
        None,
        "Directory for parameters offloaded to disk by DeepSpeed-style parameter offloading.",
        unsupported="DeepSpeed parameter offloading is not used by st_ray",
    ),
    # Quantisation
    opt(
        "quantize_activations",
        bool,
        False,
        "Quantise activations as well as weights during training.",
        unsupported="activation quantisation is not implemented in st_ray",
    ),
]

"""Options of the training loop: duration, optimiser, schedules, EMA, timesteps and loss."""

from st_ray.config.schema import opt

GROUP = "Training loop, optimizer and loss"

_NO_OPTIMIZER_OFFLOAD = (
    "offloading optimizer state or gradients to the CPU is not supported by st_ray yet"
)

OPTIONS = [
    # --- duration and batching ---
    opt(
        "train_batch_size",
        int,
        4,
        "Samples per forward/backward pass on each GPU. The effective batch is this times "
        "gradient_accumulation_steps times the number of workers.",
        minimum=1,
        dataset_field=True,
        dataset_unsupported="every dataset uses the run-wide train_batch_size; per-dataset "
        "batch sizes are not implemented yet",
    ),
    opt(
        "gradient_accumulation_steps",
        int,
        1,
        "Sum gradients over this many batches before each optimizer step, to reach a larger "
        "effective batch without more GPU memory.",
        minimum=1,
    ),
    opt(
        "num_train_epochs",
        int,
        1,
        "How many passes over the dataset to train for. Set it to 0 when max_train_steps "
        "decides the length of the run.",
        minimum=0,
    ),
    opt(
        "max_train_steps",
        int,
        None,
        "Stop after this many optimizer steps. Unset or 0 trains for num_train_epochs instead; "
        "when set, num_train_epochs must be 0.",
        minimum=0,
    ),
    opt(
        "ignore_final_epochs",
        bool,
        False,
        "Keep training until max_train_steps even if the epoch count runs out first, e.g. after "
        "the dataset shrank between resumes.",
        no_effect="max_train_steps, when set, always decides the length of the run",
    ),
    # --- precision ---
    opt(
        "mixed_precision",
        str,
        "bf16",
        "Compute dtype of the forward and backward passes. bf16 is the sensible choice on "
        "Ampere and newer GPUs; 'no' trains in fp32.",
        choices=("no", "fp16", "bf16", "fp8"),
        unsupported_values={
            "fp8": "fp8 mixed precision is not supported by st_ray yet; quantise the base model "
            "(e.g. base_model_precision: fp8-torchao) instead",
        },
    ),
    opt(
        "gradient_precision",
        str,
        None,
        "Keep gradients in fp32 ('fp32') or in the parameter dtype ('unmodified'). Unset lets "
        "the chosen optimizer decide.",
        choices=(None, "unmodified", "fp32"),
        no_effect="trainable weights and their gradients are always fp32 in st_ray",
    ),
    # --- optimizer ---
    opt(
        "optimizer",
        str,
        "adamw_bf16",
        "Optimizer algorithm. adamw_bf16 is a solid default for bf16 weights; ao-* and optimi-* "
        "variants save memory, prodigy adapts the learning rate itself.",
        choices=(
            "adamw_bf16",
            "ao-adamw8bit",
            "ao-adamw4bit",
            "ao-adamfp8",
            "ao-adamwfp8",
            "adamw_schedulefree",
            "adamw_schedulefree+aggressive",
            "adamw_schedulefree+no_kahan",
            "optimi-stableadamw",
            "optimi-adamw",
            "optimi-lion",
            "optimi-radam",
            "optimi-ranger",
            "optimi-adan",
            "optimi-adam",
            "optimi-sgd",
            "soap",
            "prodigy",
        ),
    ),
    opt(
        "optimizer_config",
        str,
        None,
        "Extra optimizer keyword arguments as comma-separated key=value pairs, e.g. "
        "'d_coef=0.1' for prodigy. Betas are better set with optimizer_beta1/2.",
    ),
    opt(
        "optimizer_beta1",
        float,
        None,
        "First-moment decay (beta1) for any optimizer that has one; overrides adam_beta1 and "
        "the optimizer's default when set.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "optimizer_beta2",
        float,
        None,
        "Second-moment decay (beta2) for any optimizer that has one; overrides adam_beta2 and "
        "the optimizer's default when set.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "adam_beta1",
        float,
        0.9,
        "beta1 of Adam-family optimizers: how quickly the running mean of gradients forgets old "
        "steps.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "adam_beta2",
        float,
        0.999,
        "beta2 of Adam-family optimizers: how quickly the running mean of squared gradients "
        "forgets old steps.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "adam_epsilon",
        float,
        1e-8,
        "Small value added to the denominator of Adam-family updates so they stay finite.",
        minimum=0,
    ),
    opt(
        "adam_weight_decay",
        float,
        0.01,
        "Decoupled weight decay of Adam-family optimizers; pulls weights towards zero to "
        "regularise.",
        minimum=0,
    ),
    opt(
        "prodigy_steps",
        int,
        None,
        "Prodigy: stop adapting the learning rate estimate after this many steps (unset adapts "
        "throughout).",
        minimum=0,
    ),
    opt(
        "optimizer_release_gradients",
        bool,
        False,
        "optimi-* optimizers: free each gradient as soon as its parameter is updated, lowering "
        "peak memory. Incompatible with gradient accumulation.",
    ),
    opt(
        "fuse_optimizer",
        bool,
        False,
        "Use fused (single-kernel) optimizer updates where available, to cut memory traffic; "
        "SimpleTuner applies it to its CPU-offloading optimizer wrapper.",
        no_effect="it only applies to SimpleTuner's CPU-offloading optimizer wrapper, which st_ray does not have",
    ),
    opt(
        "set_grads_to_none",
        bool,
        False,
        "Release gradient tensors after each step instead of zero-filling them; saves a little "
        "memory and time.",
    ),
    opt(
        "optimizer_cpu_offload_method",
        str,
        "none",
        "How optimizer state would be offloaded to the CPU.",
        choices=("none",),
        unsupported=_NO_OPTIMIZER_OFFLOAD,
    ),
    opt(
        "optimizer_offload_gradients",
        bool,
        False,
        "Move gradients to the CPU for the optimizer step to save GPU memory.",
        unsupported=_NO_OPTIMIZER_OFFLOAD,
    ),
    # --- gradient clipping ---
    opt(
        "max_grad_norm",
        float,
        2.0,
        "Clipping threshold applied to gradients before each step (see grad_clip_method); 0 "
        "disables clipping.",
        minimum=0,
    ),
    opt(
        "grad_clip_method",
        str,
        "value",
        "'value' clamps every gradient element to +/-max_grad_norm; 'norm' rescales all "
        "gradients so their global norm is at most max_grad_norm.",
        choices=("value", "norm"),
    ),
    # --- learning rate schedule ---
    opt(
        "learning_rate",
        float,
        4e-7,
        "Peak learning rate reached after warmup. Full fine-tunes want roughly 1e-7 to 1e-6, "
        "LoRA roughly 1e-5 to 1e-3; the default is only sensible for full training.",
        minimum=0,
    ),
    opt(
        "lr_scheduler",
        str,
        "constant_with_warmup",
        "Shape of the learning rate over the run. Note that 'sine', 'cosine' and "
        "'cosine_with_restarts' use lr_warmup_steps as their cycle length, as in SimpleTuner.",
        choices=(
            "linear",
            "sine",
            "cosine",
            "cosine_with_restarts",
            "polynomial",
            "constant",
            "constant_with_warmup",
        ),
    ),
    opt(
        "lr_warmup_steps",
        int,
        0,
        "Ramp the learning rate up linearly from 0 over this many steps; helps stability at the "
        "start, especially with high learning rates.",
        minimum=0,
    ),
    opt(
        "lr_num_cycles",
        int,
        1,
        "Number of cosine cycles for the generic Diffusers schedules that take one.",
        minimum=1,
        no_effect="cosine_with_restarts restarts every lr_warmup_steps, as in SimpleTuner; no selectable schedule uses a cycle count",
    ),
    opt(
        "lr_power",
        float,
        0.8,
        "Exponent of the polynomial schedule: 1 decays linearly, larger values drop faster "
        "early on.",
        minimum=0,
    ),
    opt(
        "lr_end",
        float,
        4e-7,
        "Floor of the learning rate: where 'polynomial' ends up, and the minimum of the 'sine', "
        "'cosine' and 'cosine_with_restarts' cycles.",
        minimum=0,
    ),
    opt(
        "lr_scale",
        bool,
        False,
        "Multiply learning_rate by the effective batch size (batch x accumulation x GPUs), to "
        "keep a rate tuned on one GPU when scaling out.",
    ),
    opt(
        "lr_scale_sqrt",
        bool,
        False,
        "With lr_scale, scale by the square root of the effective batch size instead, the "
        "gentler rule usually preferred for Adam.",
    ),
    # --- EMA ---
    opt(
        "use_ema",
        bool,
        False,
        "Keep an exponential moving average of the trained weights and save it alongside them; "
        "the average is often smoother and more stable than the raw weights.",
    ),
    opt(
        "ema_decay",
        float,
        0.995,
        "How slowly the EMA follows the trained weights: closer to 1 averages over more steps.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "ema_device",
        str,
        "cpu",
        "Where the EMA weights live between updates: 'cpu' saves GPU memory, 'accelerator' "
        "updates faster.",
        choices=("accelerator", "cpu"),
    ),
    opt(
        "ema_cpu_only",
        bool,
        False,
        "With ema_device=cpu, also perform the EMA update on the CPU instead of moving the "
        "weights to the GPU for it.",
    ),
    opt(
        "ema_update_interval",
        int,
        1,
        "Update the EMA only every N optimizer steps, to cut its cost (mostly useful with a "
        "CPU-resident EMA).",
        minimum=1,
    ),
    opt(
        "ema_foreach_disable",
        bool,
        False,
        "Update the EMA tensor by tensor instead of with torch._foreach kernels, for backends "
        "where those misbehave.",
    ),
    opt(
        "ema_validation",
        str,
        "comparison",
        "Which weights validation renders when EMA is on: both the trained and the EMA weights "
        "('comparison'), only the EMA ('ema_only') or only the trained ones ('none').",
        choices=("none", "ema_only", "comparison"),
        unsupported_values={
            "none": "st_ray's validation always renders the EMA comparison for now",
            "ema_only": "st_ray's validation always renders the EMA comparison for now",
        },
    ),
    # --- timestep sampling (DDPM-style models) ---
    opt(
        "disable_segmented_timestep_sampling",
        bool,
        False,
        "Draw each sample's timestep independently instead of one per equal segment of the "
        "schedule; useful when timestep_bias limits the range.",
    ),
    opt(
        "timestep_bias_strategy",
        str,
        "none",
        "Sample some timesteps more often: 'earlier' favours the low timestep numbers "
        "(little noise: fine detail), 'later' the high ones (much noise: composition), 'range' "
        "the window timestep_bias_begin..end.",
        choices=("earlier", "later", "range", "none"),
    ),
    opt(
        "timestep_bias_begin",
        int,
        0,
        "First timestep of the favoured window when timestep_bias_strategy is 'range'.",
        minimum=0,
        maximum=1000,
    ),
    opt(
        "timestep_bias_end",
        int,
        1000,
        "Last timestep of the favoured window when timestep_bias_strategy is 'range'.",
        minimum=0,
        maximum=1000,
    ),
    opt(
        "timestep_bias_multiplier",
        float,
        1.0,
        "How much more often the favoured timesteps are drawn; 1.0 means no bias.",
        minimum=0,
    ),
    opt(
        "timestep_bias_portion",
        float,
        0.25,
        "Fraction of the schedule favoured by the 'earlier' and 'later' strategies.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "training_scheduler_timestep_spacing",
        str,
        "trailing",
        "How the training noise scheduler spaces its timesteps; 'trailing' reaches the "
        "terminal (pure-noise) step, which zero-terminal-SNR training needs.",
        choices=("leading", "linspace", "trailing"),
        no_effect="training samples integer timesteps directly; spacing only shapes inference",
    ),
    opt(
        "inference_scheduler_timestep_spacing",
        str,
        "trailing",
        "How the validation sampler spaces its timesteps (DDPM-style models; flow-matching "
        "samplers space sigmas themselves). rescale_betas_zero_snr forces 'trailing'.",
        choices=("leading", "linspace", "trailing"),
    ),
    opt(
        "rescale_betas_zero_snr",
        bool,
        False,
        "Rescale the noise schedule to zero terminal SNR so the model can produce true blacks "
        "and whites; needed for v-prediction models such as SD 2.x.",
    ),
    # --- timestep sampling (flow-matching models) ---
    opt(
        "flow_sigmoid_scale",
        float,
        1.0,
        "Spread of the default logit-normal (sigmoid) timestep sampler; larger values push "
        "samples towards both ends of the schedule.",
        minimum=0,
        aliases=("flow_matching_sigmoid_scale",),
    ),
    opt(
        "flow_use_uniform_schedule",
        bool,
        False,
        "Sample flow-matching timesteps uniformly instead of from the sigmoid distribution.",
        aliases=("flux_use_uniform_schedule",),
    ),
    opt(
        "flow_use_beta_schedule",
        bool,
        False,
        "Sample flow-matching timesteps from a Beta(alpha, beta) distribution instead of the "
        "sigmoid one.",
        aliases=("flux_use_beta_schedule",),
    ),
    opt(
        "flow_beta_schedule_alpha",
        float,
        2.0,
        "Alpha of the Beta timestep distribution (flow_use_beta_schedule).",
        minimum=0,
        aliases=("flux_beta_schedule_alpha",),
    ),
    opt(
        "flow_beta_schedule_beta",
        float,
        2.0,
        "Beta of the Beta timestep distribution (flow_use_beta_schedule).",
        minimum=0,
        aliases=("flux_beta_schedule_beta",),
    ),
    opt(
        "flow_schedule_shift",
        float,
        3.0,
        "Shift sampled sigmas towards the noisy end (>1) or the clean end (<1); higher values "
        "train composition more, lower values fine detail. 0 disables shifting.",
        minimum=0,
        aliases=("flux_schedule_shift",),
    ),
    opt(
        "flow_schedule_auto_shift",
        bool,
        False,
        "Derive the shift from each batch's resolution (more shift for larger images). Only "
        "takes effect when flow_schedule_shift is 0.",
        aliases=("flux_schedule_auto_shift",),
    ),
    # --- loss ---
    opt(
        "loss_type",
        str,
        "l2",
        "Training loss: 'l2' (mean squared error) or the outlier-tolerant 'huber' and "
        "'smooth_l1', which can help with noisy or unusual datasets.",
        choices=("l2", "huber", "smooth_l1"),
    ),
    opt(
        "huber_schedule",
        str,
        "snr",
        "How the Huber/smooth-L1 threshold changes with the timestep: follow the SNR, decay "
        "exponentially, or stay at huber_c.",
        choices=("snr", "exponential", "constant"),
    ),
    opt(
        "huber_c",
        float,
        0.1,
        "Threshold between the quadratic and linear parts of the Huber/smooth-L1 loss.",
        minimum=0,
    ),
    opt(
        "snr_gamma",
        float,
        None,
        "Min-SNR loss weighting for epsilon/v-prediction models: caps the weight of low-noise "
        "timesteps at gamma. 5 is the usual value; unset or 0 disables it.",
        minimum=0,
    ),
    opt(
        "snr_weight",
        float,
        1.0,
        "Multiplier on the SNR-weighted loss term; 1.0 keeps it at full strength.",
        minimum=0,
    ),
    opt(
        "use_soft_min_snr",
        bool,
        False,
        "Use a smooth soft-min instead of a hard cap for Min-SNR weighting. Mainly helps pixel "
        "(pixel-space) models; may blur latent models.",
    ),
    opt(
        "soft_min_snr_sigma_data",
        float,
        None,
        "Standard deviation of the training data assumed by soft Min-SNR weighting.",
    ),
    opt(
        "masked_loss_probability",
        float,
        1.0,
        "Share of batches in which segmentation-conditioning datasets restrict the loss to the "
        "masked regions; plain mask datasets always apply their mask.",
        minimum=0,
        maximum=1,
    ),
    # --- noise perturbation ---
    opt(
        "offset_noise",
        bool,
        False,
        "Add offset noise (strength noise_offset) to epsilon/v-prediction training so the model "
        "learns very dark and very bright images. Not for flow-matching models.",
    ),
    opt(
        "noise_offset",
        float,
        0.1,
        "Strength of the per-channel constant added to the noise when offset_noise is on.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "noise_offset_probability",
        float,
        0.25,
        "Share of training samples that receive offset noise.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "input_perturbation",
        float,
        0.0,
        "Add this much extra noise to the model input only (not the target), a regulariser "
        "against exposure bias; around 0.1 is typical, 0 disables it.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "input_perturbation_steps",
        int,
        0,
        "Fade input_perturbation out linearly over the first N steps; 0 applies it for the "
        "whole run.",
        minimum=0,
    ),
]

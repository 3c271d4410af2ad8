"""Validation image generation and evaluation options."""

from st_ray.config.schema import Json, opt

_NO_ADAPTER = "loading extra adapters only for validation is not implemented in st_ray"
_NO_PREVIEW = "streaming validation previews (Tiny AutoEncoder frames sent by webhook) are not implemented in st_ray"

GROUP = "Validation and evaluation"

OPTIONS = [
    # Schedule
    opt(
        "validation_step_interval",
        int,
        100,
        "Generate validation images every N optimizer steps.",
        minimum=1,
        aliases=("validation_steps",),
    ),
    opt(
        "validation_epoch_interval",
        int,
        None,
        "Generate validation images every N completed epochs, in addition to any step interval.",
        minimum=1,
    ),
    opt(
        "validation_on_startup",
        bool,
        False,
        "Render validation images from the untouched base model before the first step.",
    ),
    opt(
        "disable_benchmark",
        bool,
        False,
        "Skip the step-0 baseline images of the base model that later validations are "
        "compared against.",
    ),
    opt(
        "validation_disable",
        bool,
        False,
        "Turn off validation image generation entirely.",
    ),
    opt(
        "validation_mode",
        str,
        "auto",
        "st_ray: where validations render. 'sync': on rank 0 while every rank waits "
        "(SimpleTuner's behaviour); 'async': on a validation actor of their own from a "
        "snapshot of the weights while training goes on; 'auto': async when the Ray cluster "
        "has a GPU the Train workers do not take, else sync (CPU-only clusters: sync).",
        choices=("auto", "sync", "async"),
    ),
    opt(
        "validation_actor_gpus",
        float,
        None,
        "st_ray: GPUs of the asynchronous validation actor (a fraction shares one; 0 renders "
        "on CPU). Unset: 1 when a GPU is spare, else 0.",
        minimum=0,
    ),
    opt(
        "validation_actor_cpus",
        float,
        1.0,
        "st_ray: CPUs the asynchronous validation actor asks of Ray.",
        minimum=0,
    ),
    opt(
        "validation_method",
        str,
        "simpletuner-local",
        "How validation runs: the built-in pipeline, or an external script.",
        choices=("simpletuner-local", "external-script"),
    ),
    opt(
        "validation_external_script",
        str,
        None,
        "Command run for validation when validation_method is 'external-script'; may contain "
        "placeholders such as {local_checkpoint_path} (the latest checkpoint) and "
        "{global_step} (as for post_checkpoint_script).",
    ),
    opt(
        "validation_external_background",
        bool,
        False,
        "Start the external validation script without waiting for it.",
    ),
    # Prompts
    opt(
        "validation_prompt",
        str,
        None,
        "Prompt rendered at each validation.",
    ),
    opt(
        "validation_negative_prompt",
        str,
        "blurry, cropped, ugly",
        "Negative prompt used for validation images on models with classifier-free guidance.",
    ),
    opt(
        "validation_prompt_library",
        bool,
        False,
        "Also render SimpleTuner's built-in set of test prompts at each validation.",
    ),
    opt(
        "user_prompt_library",
        Json,
        None,
        "Your own prompt library: a JSON object mapping short names to prompts (inline or a "
        "path to a JSON file), rendered at each validation.",
    ),
    opt(
        "validation_disable_unconditional",
        bool,
        False,
        "Skip the extra image rendered from an empty prompt at each validation.",
    ),
    opt(
        "validation_using_datasets",
        bool,
        False,
        "Validate image-to-image by partially denoising images taken from the training "
        "datasets instead of generating from text alone.",
        unsupported="dataset-driven (img2img / i2v) validation is not implemented in st_ray",
    ),
    opt(
        "validation_stitch_input_location",
        str,
        "left",
        "Side of the output on which the input image is placed for image-to-image validations.",
        choices=("left", "right"),
        unsupported="dataset-driven (img2img) validation is not implemented in st_ray",
    ),
    # Sampling
    opt(
        "num_validation_images",
        int,
        1,
        "Images rendered for each validation prompt.",
        minimum=1,
    ),
    opt(
        "validation_resolution",
        str,
        None,
        "Size of validation images: an edge in pixels ('1024'), WIDTHxHEIGHT ('1216x832'), or "
        "several comma-separated sizes. Unset: the training resolution.",
    ),
    opt(
        "validation_num_inference_steps",
        int,
        30,
        "Sampler steps per validation image.",
        minimum=1,
    ),
    opt(
        "validation_guidance",
        float,
        7.5,
        "Classifier-free guidance scale for validation images.",
        minimum=0,
    ),
    opt(
        "validation_guidance_rescale",
        float,
        0.0,
        "Guidance rescale factor (0 disables it) that tames over-exposure at high CFG, mainly "
        "for zero-terminal-SNR models.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "validation_noise_scheduler",
        str,
        None,
        "Sampler for validation images. Unset: the model's own default.",
        choices=("ddim", "ddpm", "euler", "euler-a", "unipc", "dpm++", "perflow"),
        unsupported_values={
            "perflow": "the PeRFlow sampler belongs to PeRFlow distillation, which st_ray does "
            "not implement",
        },
    ),
    opt(
        "validation_seed",
        int,
        None,
        "Seed for validation images, so each validation is comparable with the last. Unset: "
        "the training seed.",
        minimum=0,
    ),
    opt(
        "validation_randomize",
        bool,
        False,
        "Use a fresh random seed at every validation instead of a fixed one.",
    ),
    opt(
        "validation_seed_source",
        str,
        "cpu",
        "Device whose random generator produces validation noise. 'cpu' gives the same images "
        "on any GPU type.",
        choices=("cpu", "gpu"),
    ),
    opt(
        "validation_lycoris_strength",
        float,
        1.0,
        "Multiplier applied to a LyCORIS adapter while rendering validation images.",
        minimum=0,
    ),
    opt(
        "validation_torch_compile",
        bool,
        False,
        "Compile the validation pipeline with torch.compile for faster sampling.",
    ),
    # Model-specific guidance tweaks
    opt(
        "validation_guidance_real",
        float,
        1.0,
        "True classifier-free guidance scale for guidance-distilled models (pipelines with "
        "true_cfg_scale; uses the validation negative prompt); 1.0 leaves it off.",
        minimum=1,
    ),
    opt(
        "validation_no_cfg_until_timestep",
        int,
        2,
        "With true CFG on a guidance-distilled model, the number of initial sampling steps run "
        "without it.",
        minimum=0,
    ),
    opt(
        "validation_guidance_skip_layers",
        Json,
        None,
        "JSON list of transformer block indices to skip for skip-layer guidance during "
        "validation (pipelines with skip_guidance_layers; needs validation_guidance above 1).",
    ),
    opt(
        "validation_guidance_skip_layers_start",
        float,
        0.01,
        "Fraction of the sampling schedule at which skip-layer guidance begins.",
        minimum=0,
    ),
    opt(
        "validation_guidance_skip_layers_stop",
        float,
        0.2,
        "Fraction of the sampling schedule at which skip-layer guidance ends.",
        minimum=0,
    ),
    opt(
        "validation_guidance_skip_scale",
        float,
        2.8,
        "Strength of skip-layer guidance.",
        minimum=0,
    ),
    # Previews
    opt(
        "validation_preview",
        bool,
        False,
        "Decode intermediate latents with a tiny autoencoder and stream them while validation "
        "images are being sampled.",
        unsupported=_NO_PREVIEW,
    ),
    opt(
        "validation_preview_steps",
        int,
        1,
        "Decode a preview every N sampling steps when validation_preview is on.",
        minimum=1,
        unsupported=_NO_PREVIEW,
    ),
    # Temporary validation adapters
    opt(
        "validation_adapter_path",
        str,
        None,
        "LoRA (Hub repo, optionally repo:weight_name, or local file) attached only while "
        "validation images are rendered.",
        unsupported=_NO_ADAPTER,
    ),
    opt(
        "validation_adapter_name",
        str,
        None,
        "Label for the adapter loaded from validation_adapter_path.",
        unsupported=_NO_ADAPTER,
    ),
    opt(
        "validation_adapter_strength",
        float,
        1.0,
        "Scale applied to the temporary validation adapter.",
        minimum=0,
        unsupported=_NO_ADAPTER,
    ),
    opt(
        "validation_adapter_mode",
        str,
        "adapter_only",
        "Render with the temporary adapter only, side by side with the plain model "
        "('comparison'), or not at all ('none').",
        choices=("adapter_only", "comparison", "none"),
        unsupported=_NO_ADAPTER,
    ),
    opt(
        "validation_adapter_config",
        Json,
        None,
        "JSON list (inline or file) of adapter combinations to try one after another during "
        "validation.",
        unsupported=_NO_ADAPTER,
    ),
    # Evaluation
    opt(
        "evaluation_type",
        str,
        "none",
        "Extra score computed on validation images; 'clip' measures prompt adherence with a "
        "CLIP model (logged per prompt and as clip/mean at each validation; validations also "
        "run on eval_steps_interval / eval_epoch_interval).",
        choices=("none", "clip"),
    ),
    opt(
        "pretrained_evaluation_model_name_or_path",
        str,
        "openai/clip-vit-large-patch14-336",
        "CLIP model used when evaluation_type is 'clip' (a Hub id or a local folder).",
    ),
    opt(
        "num_eval_images",
        int,
        4,
        "Samples of each evaluation dataset (the first N by content hash, always the same) "
        "that the evaluation loss is measured on.",
        minimum=1,
    ),
    opt(
        "eval_steps_interval",
        int,
        None,
        "Compute the evaluation loss every N optimizer steps (it is always computed at the "
        "last step when an evaluation dataset is configured).",
        minimum=1,
    ),
    opt(
        "eval_epoch_interval",
        float,
        None,
        "Compute the evaluation loss every N epochs; fractions such as 0.5 run it several "
        "times per epoch.",
        minimum=0,
    ),
    opt(
        "eval_timesteps",
        int,
        28,
        "Number of timesteps, spread across the schedule, at which the evaluation loss is "
        "measured.",
        minimum=1,
    ),
    opt(
        "eval_dataset_id",
        str,
        None,
        'Id of the dataset (from data_backend_config, with "dataset_type": "eval") that '
        "supplies evaluation samples. Unset: every eval dataset.",
    ),
    opt(
        "eval_dataset_pooling",
        bool,
        False,
        "Report one combined evaluation loss over all evaluation datasets instead of one per "
        "dataset.",
    ),
    opt(
        "eval_loss_disable",
        bool,
        False,
        "Do not compute the evaluation loss even when an evaluation dataset is configured.",
    ),
]

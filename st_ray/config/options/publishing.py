"""Publishing options: model cards and metadata, Hub uploads, webhooks, hooks and disk guards."""

from st_ray.config.schema import Json, opt

_NO_HOOKS = "post-checkpoint and post-upload hooks are not implemented in st_ray"
_NO_DISK_GUARD = "the free-disk-space guard is on st_ray's later roadmap, not implemented yet"

GROUP = "Publishing, model cards and hooks"

OPTIONS = [
    # Model card and metadata
    opt(
        "hub_model_id",
        str,
        None,
        "Name for the trained model: its folder under output_dir and, with push_to_hub, the "
        "Hugging Face Hub repository ('namespace/name') it is uploaded to.",
    ),
    opt(
        "model_card_note",
        str,
        None,
        "Text placed at the top of the generated model card.",
    ),
    opt(
        "model_card_safe_for_work",
        bool,
        False,
        "Leave out the default not-safe-for-work warning from the generated model card.",
    ),
    opt(
        "modelspec_comment",
        str,
        None,
        "Comment stored as modelspec.comment in the saved safetensors metadata, shown by model "
        "viewers; {env:VAR} placeholders are expanded when each checkpoint is saved.",
    ),
    # Hugging Face Hub
    opt(
        "push_to_hub",
        bool,
        False,
        "Upload the final output (weights, model card, validation images) to the Hugging Face "
        "Hub repository hub_model_id when training ends, from rank 0's worker. The token is "
        "read from HF_TOKEN in the environment; HF_ENDPOINT selects another Hub. Transient "
        "failures are retried; a final failure fails the job, the local output intact.",
    ),
    opt(
        "push_checkpoints_to_hub",
        bool,
        False,
        "With push_to_hub, also upload each checkpoint's weights and manifest to the Hub "
        "repository as checkpoint-<step>/. A failed checkpoint upload is reported and training "
        "goes on.",
    ),
    opt(
        "push_to_hub_background",
        bool,
        False,
        "Upload to the Hub from a background thread so training does not wait for checkpoint "
        "uploads; the job still waits for every upload before it ends, so failures surface.",
    ),
    opt(
        "model_card_private",
        bool,
        True,
        "Create the Hub repository as private (push_to_hub). An existing repository keeps its "
        "visibility.",
    ),
    opt(
        "publishing_config",
        Json,
        None,
        "Upload targets besides the Hub, as an object, a list, inline JSON or a JSON file: "
        "entries {provider: s3 | backblaze_b2, bucket, region, access_key, secret_key, "
        "endpoint_url, base_path, public_base_url}. The final output folder is uploaded to "
        "s3://bucket/base_path/<its name> after the final validation. azure_blob and dropbox "
        "need SDKs st_ray does not install and are refused. May hold credentials (redacted).",
        secret=True,
    ),
    # Webhooks
    opt(
        "webhook_config",
        Json,
        None,
        "Webhook targets (Discord, custom endpoints) that receive training events, as inline "
        "JSON or a JSON file; usually holds URLs with tokens.",
        secret=True,
        unsupported="webhook notifications are not implemented in st_ray; follow runs in MLflow",
    ),
    opt(
        "webhook_reporting_interval",
        int,
        None,
        "Seconds between progress reports sent to webhooks.",
        minimum=0,
        unsupported="webhook notifications are not implemented in st_ray; follow runs in MLflow",
    ),
    # Hooks
    opt(
        "post_checkpoint_script",
        str,
        None,
        "Command run after each checkpoint is written locally; placeholders such as "
        "{local_checkpoint_path} and {global_step} are filled in.",
        unsupported=_NO_HOOKS,
    ),
    opt(
        "post_upload_script",
        str,
        None,
        "Command run after each upload finishes; receives the same placeholders plus "
        "{remote_checkpoint_path}.",
        unsupported=_NO_HOOKS,
    ),
    # Disk space guard
    opt(
        "disk_low_threshold",
        str,
        None,
        "Free space required before a checkpoint is saved, as a size such as '100G', '50M' or "
        "plain bytes. Unset: no check.",
        unsupported=_NO_DISK_GUARD,
    ),
    opt(
        "disk_low_action",
        str,
        "stop",
        "What happens when free space is below disk_low_threshold: stop training, wait for "
        "space, or run disk_low_script.",
        choices=("stop", "wait", "script"),
        unsupported=_NO_DISK_GUARD,
    ),
    opt(
        "disk_low_script",
        str,
        None,
        "Cleanup command run when disk_low_action is 'script'.",
        unsupported=_NO_DISK_GUARD,
    ),
    # Output marking
    opt(
        "enable_watermark",
        bool,
        False,
        "Add an invisible watermark (the invisible-watermark package, DWT-DCT, the 48-bit "
        "message diffusers' own watermarker embeds) to generated validation images of at least "
        "256x256 pixels.",
    ),
]

"""Publishing options: model cards and metadata, Hub uploads, webhooks, hooks and disk guards."""

from st_ray.config.schema import Json, opt

_NO_HUB = "uploading to the Hugging Face Hub is not implemented in st_ray"
_NO_HOOKS = "post-checkpoint and post-upload hooks are not implemented in st_ray"
_NO_DISK_GUARD = "the free-disk-space guard is on st_ray's later roadmap, not implemented yet"

GROUP = "Publishing, model cards and hooks"

OPTIONS = [
    # Model card and metadata
    opt(
        "hub_model_id",
        str,
        None,
        "Name for the trained model, used as its folder under output_dir. st_ray does not "
        "upload it to the Hugging Face Hub.",
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
        "Upload the final model to the Hugging Face Hub repository named by hub_model_id.",
        unsupported=_NO_HUB,
    ),
    opt(
        "push_checkpoints_to_hub",
        bool,
        False,
        "Also upload every intermediate checkpoint to the Hub repository.",
        unsupported=_NO_HUB,
    ),
    opt(
        "push_to_hub_background",
        bool,
        False,
        "Upload to the Hub from a background worker so training does not wait.",
        unsupported=_NO_HUB,
    ),
    opt(
        "model_card_private",
        bool,
        True,
        "Create the Hub repository as private.",
        unsupported=_NO_HUB,
    ),
    opt(
        "publishing_config",
        Json,
        None,
        "Extra upload targets beyond the Hub (S3-compatible, Backblaze B2, Azure Blob, "
        "Dropbox) as inline JSON or a JSON file; may hold credentials.",
        secret=True,
        unsupported="publishing to external storage providers is not implemented in st_ray",
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
        "Add an invisible watermark to generated validation images.",
        unsupported="invisible watermarking of generated images is not implemented in st_ray",
    ),
]

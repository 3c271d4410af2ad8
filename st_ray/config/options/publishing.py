"""Publishing options: model cards and metadata, Hub uploads, webhooks, hooks and disk guards."""

from st_ray.config.schema import Json, opt

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
        "endpoint_url, base_path, public_base_url}, {provider: azure_blob | azure, container, "
        "connection_string | account_url/account_name + account_key, base_path} or "
        "{provider: dropbox, token | refresh_token + app_key (+ app_secret), base_path}. The "
        "final output folder is uploaded under base_path/<its name> after the final "
        "validation. May hold credentials (redacted).",
        secret=True,
    ),
    # Webhooks
    opt(
        "webhook_config",
        Json,
        None,
        "Webhook targets that receive training events (start, progress, validation images, "
        "checkpoints, errors, the end): one object or a list, inline JSON or a JSON file. "
        'Discord: {"webhook_type": "discord", "webhook_url": ...}; any JSON endpoint: '
        '{"webhook_type": "raw", "callback_url": ...}; optional message_prefix, log_level, '
        "ssl_no_verify. Sent in the background with retries; a dead endpoint never stops "
        "training. The payloads' job_id comes from ST_RAY_JOB_ID or SIMPLETUNER_JOB_ID. "
        "Secret: never logged or saved.",
        secret=True,
    ),
    opt(
        "webhook_reporting_interval",
        int,
        None,
        "Seconds between progress events sent to 'raw' webhooks (Discord gets none): the first "
        "step reports at once, then one every N seconds. Unset or "
        "0: no progress events.",
        minimum=0,
    ),
    # Hooks
    opt(
        "post_checkpoint_script",
        str,
        None,
        "Command run in the background on rank 0's node after each checkpoint (regular or "
        "rolling) is saved; {local_checkpoint_path}, {global_step}, {tracker_run_name}, "
        "{tracker_project_name}, {model_family}, {model_type}, {lora_type}, {huggingface_path} "
        "and {validation_*} options are filled in. Its output is logged; a failure never "
        "stops training.",
    ),
    opt(
        "post_upload_script",
        str,
        None,
        "Command run in the background after each upload (Hub, publishing targets) with the "
        "same placeholders plus {remote_checkpoint_path}. Its output is logged; a failure "
        "never stops training.",
    ),
    # Disk space guard
    opt(
        "disk_low_threshold",
        str,
        None,
        "Free space required before each checkpoint is saved, as a size such as '100G', "
        "'50M', '1T' or plain bytes; checked on the worker's staging folder and on local run "
        "storage. Unset: no check.",
    ),
    opt(
        "disk_low_action",
        str,
        "stop",
        "Below disk_low_threshold: 'stop' ends the run before writing (the last checkpoint "
        "stays intact), 'wait' checks again every 30 s until there is room, 'script' runs "
        "disk_low_script and stops if there is still too little room.",
        choices=("stop", "wait", "script"),
    ),
    opt(
        "disk_low_script",
        str,
        None,
        "Cleanup command run when disk_low_action is 'script'; training waits for it.",
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

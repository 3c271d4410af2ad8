"""Output location, checkpointing and experiment tracking options."""

from st_ray.config.schema import opt

_MLFLOW_ONLY = "st_ray logs to MLflow; set report_to to mlflow or none"

GROUP = "Output, checkpoints and tracking"

OPTIONS = [
    # Output
    opt(
        "output_dir",
        str,
        "output/models",
        "Directory (local path) that receives checkpoints, the final model and local logs.",
    ),
    # Checkpoints
    opt(
        "checkpoint_step_interval",
        int,
        None,
        "Save a resumable checkpoint every N optimizer steps. Unset: no step-based checkpoints.",
        minimum=1,
        aliases=("checkpointing_steps",),
    ),
    opt(
        "checkpoint_epoch_interval",
        int,
        None,
        "Save a resumable checkpoint every N completed epochs, in addition to any step interval.",
        minimum=1,
    ),
    opt(
        "checkpoints_total_limit",
        int,
        None,
        "Keep at most this many checkpoints, deleting the oldest first. Unset: keep all.",
        minimum=1,
    ),
    opt(
        "checkpointing_use_tempdir",
        bool,
        False,
        "Write each checkpoint to a temporary directory and move it into place when complete, "
        "so an interrupted save never leaves a half-written checkpoint behind.",
        no_effect="checkpoints are always written to a temporary folder and handed to Ray Train whole",
    ),
    opt(
        "checkpointing_rolling_steps",
        int,
        None,
        "Save a second series of checkpoints every N steps (rolling-checkpoint-<step> in the "
        "run folder), kept apart from the regular series and its checkpoints_total_limit; a "
        "resume continues the newest checkpoint of either series.",
        minimum=1,
    ),
    opt(
        "checkpoints_rolling_total_limit",
        int,
        1,
        "How many rolling checkpoints to keep (the oldest are deleted).",
        minimum=1,
    ),
    opt(
        "resume_from_checkpoint",
        str,
        "latest",
        "Where training continues from: 'latest' picks the newest checkpoint of this run if "
        "there is one; a checkpoint name, path or s3:// URI picks that one; 'none' or empty "
        "starts fresh in a new run folder. A finished run is not trained again; a changed "
        "model, adapter, optimizer or dataset is refused.",
    ),
    # Tracking
    opt(
        "report_to",
        str,
        "mlflow",
        "Where metrics and validation images are logged: 'mlflow', or 'none' to log nothing. "
        "Accepts a comma-separated list.",
        choices=("mlflow", "tensorboard", "wandb", "comet_ml", "all", "none"),
        multiple=True,
        unsupported_values={
            "tensorboard": _MLFLOW_ONLY,
            "wandb": _MLFLOW_ONLY,
            "comet_ml": _MLFLOW_ONLY,
            "all": _MLFLOW_ONLY,
        },
    ),
    opt(
        "tracker_project_name",
        str,
        "st_ray",
        "Project the run is filed under in the tracker (the MLflow experiment unless "
        "mlflow_experiment_name is set).",
    ),
    opt(
        "tracker_run_name",
        str,
        None,
        "Name of this run in the tracker. Unset: a name is generated.",
    ),
    opt(
        "tracker_image_layout",
        str,
        "gallery",
        "How validation images are grouped in the tracker.",
        choices=("gallery", "table"),
        unsupported_values={
            "table": "MLflow stores validation images as run artifacts; only 'gallery' applies",
        },
        no_effect="MLflow stores validation images as artifacts",
    ),
    opt(
        "logging_dir",
        str,
        "logs",
        "Directory for local log files; a relative path is placed under output_dir.",
        no_effect="st_ray logs to MLflow, not TensorBoard",
    ),
    opt(
        "local_rank",
        int,
        None,
        "Accepted for compatibility with torchrun-style launchers and otherwise ignored: Ray "
        "Train assigns every worker its rank.",
        minimum=-1,
        no_effect="Ray Train assigns ranks",
    ),
]

"""st_ray's own options: how a run maps onto a Ray cluster, its storage and tracking."""

from st_ray.config.schema import Json, opt

# Ray placement group strategies (st_ray.placement builds the groups).
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")

GROUP = "Ray cluster, run storage and tracking (st_ray)"

OPTIONS = [
    opt(
        "num_processes",
        int,
        1,
        "Number of Ray Train workers (one per GPU). SimpleTuner's TRAINING_NUM_PROCESSES in "
        "config.env maps here.",
        minimum=1,
        aliases=("num_workers",),
    ),
    opt(
        "num_machines",
        int,
        1,
        "Number of nodes the run expects (config.env TRAINING_NUM_MACHINES). Ray places the "
        "workers itself; this only checks that the cluster can hold them.",
        minimum=1,
    ),
    opt(
        "use_gpu",
        str,
        "auto",
        "Give each Train worker a GPU: 'auto' uses GPUs when the cluster has them.",
        choices=("auto", "true", "false"),
    ),
    opt(
        "cpus_per_worker",
        str,
        "auto",
        "CPUs reserved for each Ray Train worker; torch uses as many threads. 'auto': the "
        "CPUs of a node that can host a worker divided by the workers it may hold (the "
        "smallest such share over the nodes that are up; 1 when none is up yet). A number "
        "asks for exactly that many.",
    ),
    opt(
        "placement_strategy",
        str,
        "PACK",
        "How Ray places the Train workers: PACK fills a node before the next (GPUs of one node "
        "talk over NVLink), SPREAD spreads them over nodes; STRICT_* insist.",
        choices=PLACEMENT_STRATEGIES,
    ),
    opt(
        "train_accelerator_type",
        str,
        None,
        "Run the Train workers only on nodes with this GPU type (Ray accelerator_type: H100, "
        "A100, L40S, ...). Unset: any GPU.",
    ),
    opt(
        "train_resources",
        Json,
        None,
        'Custom Ray resources each Train worker asks for, e.g. {"trainer": 1} to keep '
        "training on the nodes started with that resource.",
    ),
    opt(
        "cache_num_gpus",
        str,
        "auto",
        "GPUs per caching actor (VAE, text encoders, captioner): 'auto' gives each actor one "
        "GPU when the cluster has GPUs and none otherwise; a number asks for that many (0.5 "
        "puts two actors on a GPU, 0 keeps caching on CPUs).",
    ),
    opt(
        "cache_accelerator_type",
        str,
        None,
        "Run the caching actors only on nodes with this GPU type (Ray accelerator_type: T4, L4, "
        "A10G, ...): cheap GPUs encode while big ones train. Unset: any GPU.",
    ),
    opt(
        "cache_resources",
        Json,
        None,
        'Custom Ray resources each caching actor asks for, e.g. {"cache_node": 1} to keep '
        "caching on the nodes started with that resource.",
    ),
    opt(
        "cache_max_actors",
        int,
        None,
        "Most actors per caching pool. Unset: as many as the nodes up now can hold (at least "
        "one); set it on autoscaling clusters, whose GPU nodes may not be up yet.",
        minimum=1,
    ),
    opt(
        "ray_address",
        str,
        None,
        "Ray cluster to join ('auto' or ray://host:port). Unset: join RAY_ADDRESS or the "
        "running cluster, else start a local Ray instance. The address is probed first: a "
        "named one that does not answer is an error; a recorded one whose head has died is "
        "skipped with a warning.",
    ),
    opt(
        "run_storage_path",
        str,
        None,
        "Ray Train run storage for checkpoints: a local path or s3://bucket/prefix. Default: "
        "<output_dir>/ray_runs.",
    ),
    opt(
        "s3_endpoint_url",
        str,
        None,
        "Endpoint URL of an S3-compatible store used for s3:// run storage and caches "
        "(MinIO, R2, ...). Unset: AWS.",
    ),
    opt(
        "max_failures",
        int,
        3,
        "How many times Ray Train restarts a failed run (a worker killed by OOM, a node "
        "reclaimed) from its latest checkpoint (checkpoint_step_interval), or from the start "
        "when none exists yet. 0: fail at the first error; -1: retry without limit.",
        minimum=-1,
    ),
    opt(
        "mlflow_tracking_uri",
        str,
        None,
        "MLflow tracking server URI. Unset: a local store, <output_dir>/mlflow.db.",
    ),
    opt(
        "mlflow_experiment_name",
        str,
        None,
        "MLflow experiment name. Unset: tracker_project_name.",
    ),
    opt(
        "mlflow_parent_run_id",
        str,
        None,
        "MLflow run this run is logged under as a child (jobs/tune.py sets it for each trial "
        "to the campaign's run).",
    ),
    opt(
        "dynamo_backend",
        str,
        "no",
        "torch.compile backend for the denoiser (config.env TRAINING_DYNAMO_BACKEND); 'no' "
        "disables compilation.",
        choices=("no", "inductor", "aot_eager", "cudagraphs", "eager"),
    ),
    opt(
        "dynamo_mode",
        str,
        None,
        "torch.compile mode, e.g. 'max-autotune'.",
        choices=(None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    ),
    opt(
        "dynamo_fullgraph",
        bool,
        False,
        "Ask torch.compile for a single graph.",
    ),
    opt(
        "dynamo_dynamic",
        bool,
        False,
        "Let torch.compile trace dynamic shapes.",
    ),
    opt(
        "dynamo_use_regional_compilation",
        bool,
        False,
        "Compile repeated blocks once each instead of the whole model.",
    ),
]

"""Start-up and progress chatter of libraries that a user should never read, silenced at its
source: logger levels and one environment default, set before those libraries log. Only
known, harmless messages are targeted; errors always get through.

``quiet_third_party`` runs when st_ray is imported (drivers, Ray Data tasks, Train workers)
and, through the ``worker_process_setup_hook`` that ``st_ray.cluster.connect`` gives the job,
in every Ray worker process of the job, including Ray Train's own controller actors.
"""

from __future__ import annotations

import importlib.util
import logging
import os

# logger name -> the level below which its messages are dropped.
LOGGER_LEVELS = {
    # "Failed to load .../torchao/_C_cutlass_90a...so": optional CUDA kernels, absent on CPU.
    "torchao": logging.ERROR,
    # torchao's enums registered as pytree constants: a torch deprecation notice.
    "torch.utils._pytree": logging.ERROR,
    # "Unable to import `torchao` Tensor objects": only matters for torchao checkpoints.
    "diffusers.quantizers.torchao.torchao_quantizer": logging.ERROR,
    # Polled through the State API, which needs the dashboard st_ray does not start.
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    # Ray Data's "Starting execution ...", execution plans and per-run stats dumps; its
    # progress display (one bar, or one total line every 10 s without a terminal) stays.
    "ray.data._internal.execution.streaming_executor": logging.WARNING,
    # Notices about Ray Data's progress UI itself ("Progress bars for operators disabled") ...
    "ray.data._internal.progress": logging.ERROR,
    # ... but not the progress itself where there is no terminal for a bar.
    "ray.data._internal.progress.logging_progress": logging.INFO,
    # "Data sink Parquet finished. N rows ... written": the cache summary says it.
    "ray.data.dataset": logging.WARNING,
    # "Token authentication is enabled for this Ray cluster": printed by every ray.init.
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
    # Ray Train's worker-group start-up narration ("Requesting resources", ...) is quieted
    # through its RunConfig's LoggingConfig (train/trainer.py): Ray Train's own logging
    # config resets the levels of loggers under "ray.train" in its controller and workers.
    # "Creating initial MLflow database tables..." for a new local store.
    "mlflow.store.db.utils": logging.WARNING,
    # publishing_config: every Blob request's URL and headers (azure-core's HTTP logging), and
    # "Request to files/upload" per Dropbox call; st_ray prints one line per upload.
    "azure.core.pipeline.policies.http_logging_policy": logging.WARNING,
    "dropbox": logging.WARNING,
}
# Ray Train modules whose logger is named by file path: "Reporting training result N: ..."
# for every report (st_ray prints its own line per step).
PATH_NAMED_LOGGERS = {"ray": ("train/v2/_internal/execution/context.py",)}


class _NoIdleCpuAlarm(logging.Filter):
    """Ray Data warns "the cluster currently does not have any available CPUs" when the text
    stage starts while the VAE actors still hold every CPU; they free them moments later."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "does not have any available CPUs" not in record.getMessage()


def quiet_third_party() -> None:
    for name, level in LOGGER_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    dataset_logger = logging.getLogger("ray.data.dataset")
    if not any(isinstance(f, _NoIdleCpuAlarm) for f in dataset_logger.filters):
        dataset_logger.addFilter(_NoIdleCpuAlarm())
    for package, files in PATH_NAMED_LOGGERS.items():
        spec = importlib.util.find_spec(package)  # a top-level name: nothing is imported
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for relative in files:
                logging.getLogger(os.path.join(folder, relative)).setLevel(logging.WARNING)
    _name_this_cluster()
    # transformers' notes ("requires torchvision ...; falling back to the PIL processor").
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Hub-style progress bars of loading and saving weights ("Loading weights", "Writing
    # model shards"): transformers and huggingface_hub read this when imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _name_this_cluster() -> None:
    """In a Ray worker process: name its cluster in RAY_ADDRESS. Ray Train's placement-group
    cleaner queries the State API without an address, and with two Ray instances on one machine
    (a test session and a job's own) its auto-detection raises a traceback into the job's output."""
    import sys

    ray = sys.modules.get("ray")  # only where Ray is already imported and connected
    if ray is None or "RAY_ADDRESS" in os.environ or not ray.is_initialized():
        return
    if ray._private.worker.global_worker.mode != ray.WORKER_MODE:  # a driver keeps its env
        return
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def ray_init_settings() -> dict[str, object]:
    """``ray.init`` keyword arguments that quiet every worker process of the job."""
    return {"runtime_env": {"worker_process_setup_hook": f"{__name__}.quiet_third_party"}}


def quiet_ray_data() -> None:
    """Caching shows one progress display: the total, not one bar per operator."""
    from ray.data import DataContext

    DataContext.get_current().enable_operator_progress_bars = False

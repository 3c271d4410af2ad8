"""Driver side of training: a Ray Train ``TorchTrainer`` over ``train_worker``, or the same
function in-process (world size 1) for tests and debugging."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from st_ray.config.errors import ConfigError, Problem
from st_ray.device import pick_device
from st_ray.placement import (
    cluster_nodes,
    local_storage_warning,
    machines_problem,
    train_worker_cpus,
    train_worker_resources,
)
from st_ray.plan import Plan
from st_ray.train import validation_mode
from st_ray.train.checkpoints import Progress
from st_ray.train.context import SavedCallback
from st_ray.train.notifications import job_id_from_env
from st_ray.train.run_identity import run_name
from st_ray.train.worker import WorkerContext, final_output_dir, train, train_worker


@dataclass
class TrainingResult:
    metrics: dict[str, Any]
    checkpoint: str | None  # URI/path of the latest checkpoint in run storage
    output_dir: Path


def fit(
    plan: Plan,
    *,
    callbacks: Sequence[Any] = (),
    storage: tuple[str, Any] | None = None,
    resources_per_worker: dict[str, float] | None = None,
    stop_check: Callable[[], Callable[[], bool]] | None = None,
    name: str | None = None,
) -> TrainingResult:
    """Train on the Ray cluster this process is connected to. A Tune trial (st_ray.tune) adds
    its report callback, the campaign's storage (path, filesystem), its worker resources and
    ``stop_check``: a picklable factory, called once on every worker, of the question asked
    after each step (True ends the run early, at the same step on every rank). ``name``: the
    Ray Train run (folder in run storage) when the job chose one (st_ray.train.run_identity);
    ``run_name(plan)`` otherwise."""
    import ray.train
    from ray.train.torch import TorchTrainer

    options = plan.options
    use_gpu = _use_gpu(options["use_gpu"])
    storage_path, storage_fs = storage or run_storage(plan)
    nodes = cluster_nodes()
    # A campaign's storage (Tune) is checked by the campaign.
    warning = None if storage else local_storage_warning(plan.run_storage, len(nodes))
    if warning:
        print(warning, flush=True)
    if resources_per_worker is None:
        resources_per_worker = train_worker_resources(options, use_gpu, nodes)
        chosen = train_worker_cpus(options, use_gpu, nodes)
        print(
            f"  cpus_per_worker {chosen.cpus} ({chosen.reason}); torch threads per worker = "
            "its CPUs",
            flush=True,
        )
    problem = machines_problem(
        int(options.get("num_machines") or 1),
        int(options["num_processes"]),
        resources_per_worker,
        nodes,
    )
    if problem:
        raise ConfigError([Problem("Ray cluster", "num_machines", problem)])
    validation = validation_mode.choose(
        options, nodes, resources_per_worker, int(options["num_processes"])
    )
    if not options.get("validation_disable"):
        print(f"  validation {validation.describe()}", flush=True)
    # Workers need the resolved plan, not the driver's environment (it may hold secrets).
    shipped = dataclasses.replace(plan, config=dataclasses.replace(plan.config, env={}))
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "plan": shipped,
            "stop_check": stop_check,
            "job_id": job_id_from_env(plan.config.env),
            "validation": validation,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=int(options["num_processes"]),
            use_gpu=use_gpu,
            resources_per_worker=resources_per_worker,
            placement_strategy=str(options.get("placement_strategy") or "PACK"),
            accelerator_type=options.get("train_accelerator_type") or None,
        ),
        run_config=ray.train.RunConfig(
            name=name or run_name(plan),
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=options.get("checkpoints_total_limit") or None,
            ),
            failure_config=ray.train.FailureConfig(max_failures=int(options["max_failures"])),
            callbacks=list(callbacks),
            # Ray Train re-applies its logging config in its controller and workers (which
            # resets the levels st_ray.quiet set): its worker-group start-up narration is
            # INFO; failures and restarts are warnings. Its session log files keep everything.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    return TrainingResult(dict(result.metrics or {}), checkpoint, final_output_dir(options))


def fit_in_process(
    plan: Plan, checkpoint_root: Path, resume_from: Path | None = None
) -> tuple[Progress, list[dict[str, Any]]]:
    """Run the worker function here, without Ray: checkpoints go to ``checkpoint_root``
    (``checkpoint-<step>`` folders), metrics are returned."""
    reported: list[dict[str, Any]] = []

    def report(
        metrics: dict[str, Any], directory: Path | None, on_saved: SavedCallback | None = None
    ) -> None:
        reported.append(dict(metrics))
        if directory is not None:  # like Ray's upload: copy, then drop the worker's folder
            target = checkpoint_root.resolve() / f"checkpoint-{metrics['step']}"
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(directory, target)
            if on_saved is not None:  # the folder is the callback's now
                on_saved(directory, str(target))
            else:
                shutil.rmtree(directory)

    checkpoint_root.mkdir(parents=True, exist_ok=True)
    ctx = WorkerContext(
        rank=0,
        world_size=1,
        device=pick_device(),
        report=report,
        resume_dir=resume_from,
        run_fs=pafs.LocalFileSystem(),
        run_folder=str(checkpoint_root.resolve()),
        job_id=job_id_from_env(plan.config.env),
    )
    return train(plan, ctx), reported


def _use_gpu(value: str) -> bool:
    if value == "auto":
        import ray

        return bool(ray.cluster_resources().get("GPU", 0))
    return value == "true"


def run_storage(plan: Plan) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: s3:// storage gets an explicit
    pyarrow filesystem so custom endpoints (MinIO, R2, a test server) work."""
    if not plan.run_storage.startswith("s3://"):
        return plan.run_storage, None
    from st_ray import storage

    filesystem, path = storage.pyarrow_filesystem(
        plan.run_storage, storage.S3Settings.from_options(plan.options)
    )
    return path, filesystem

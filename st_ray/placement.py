"""Where Ray places st_ray's work on a cluster: the caching actors (VAE, text encoders,
captioner) and the Ray Train workers, from the cluster options.

The heterogeneous layout st_ray is built for: cheap GPUs encode the caches, big GPUs train.
Caching actors target their nodes with ``cache_accelerator_type`` / ``cache_resources``;
Train workers with ``train_accelerator_type`` / ``train_resources``. Everything here but
``cluster_nodes`` is a pure function of the options and the cluster's node resources.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Ray's own resource names: custom resources may not take them (they have their own options).
_BUILTIN = ("CPU", "GPU", "TPU", "memory", "object_store_memory")
# What Ray asks of a node per accelerator_type request (the node holds 1.0 of it).
ACCELERATOR_SHARE = 0.001


@dataclass(frozen=True)
class ActorRequest:
    """What each caching actor asks of Ray, and how many of them a pool may run."""

    num_gpus: float
    resources: dict[str, float] = field(default_factory=dict)
    accelerator_type: str | None = None
    max_actors: int = 1

    def map_batches_args(self) -> dict[str, Any]:
        """Keyword arguments for ``Dataset.map_batches`` with an actor-class UDF."""
        from ray.data import ActorPoolStrategy

        args: dict[str, Any] = {
            "compute": ActorPoolStrategy(min_size=1, max_size=self.max_actors),
            "num_gpus": self.num_gpus,
        }
        if self.resources:
            args["resources"] = dict(self.resources)
        if self.accelerator_type:
            args["accelerator_type"] = self.accelerator_type
        return args

    def node_demand(self) -> dict[str, float]:
        """The resources one actor takes from a node (GPU, custom, accelerator share)."""
        demand = {k: v for k, v in self.resources.items() if v > 0}
        if self.num_gpus > 0:
            demand["GPU"] = self.num_gpus
        if self.accelerator_type:
            demand[f"accelerator_type:{self.accelerator_type}"] = ACCELERATOR_SHARE
        return demand


def parse_resources(value: Any, key: str) -> dict[str, float]:
    """A custom-resource request: a JSON object (or its text) of name -> amount >= 0."""
    if value in (None, "", {}):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise ValueError(
                f'{key}: not JSON ({err}); accepted: an object such as {{"cache_node": 1}}'
            ) from None
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{key}: expected a JSON object of resource name -> amount, such as "
            f'{{"cache_node": 1}}; got {type(value).__name__}'
        )
    parsed = {}
    for name, amount in value.items():
        if name in _BUILTIN:
            raise ValueError(
                f"{key}: '{name}' is one of Ray's built-in resources; set it with its own "
                "option (cache_num_gpus, cpus_per_worker, ...), not as a custom resource"
            )
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
            raise ValueError(f"{key}: '{name}' must be a number >= 0, got {amount!r}")
        parsed[str(name)] = float(amount)
    return parsed


def parse_gpus(value: Any, key: str = "cache_num_gpus") -> float | None:
    """``auto`` (None: decided from the cluster) or a number of GPUs >= 0."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        gpus = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{key}: '{value}' is not a number; accepted: auto, or GPUs per actor "
            "(1, 0.5 to share a GPU between two actors, 0 for CPU only)"
        ) from None
    if gpus < 0 or not math.isfinite(gpus) or (gpus > 1 and gpus != int(gpus)):
        raise ValueError(
            f"{key}: {value} is not a valid GPU count; accepted: a fraction up to 1 or a "
            "whole number"
        )
    return gpus


def parse_cpus(value: Any, key: str = "cpus_per_worker") -> int | None:
    """``auto`` (None: decided from the cluster) or a whole number of CPUs >= 1."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        cpus = int(str(value).strip())
    except ValueError:
        cpus = 0
    if cpus < 1:
        raise ValueError(
            f"{key}: '{value}' is not a CPU count; accepted: auto (the CPUs of the worker's "
            "node divided among the Train workers on it), or a whole number >= 1"
        )
    return cpus


def check_options(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, problem) for every placement option that Ray would refuse."""
    problems = []
    for key, parse in (
        ("cpus_per_worker", parse_cpus),
        ("cache_num_gpus", parse_gpus),
        ("cache_resources", parse_resources),
        ("train_resources", parse_resources),
    ):
        try:
            parse(values.get(key), key)
        except ValueError as err:
            problems.append((key, str(err).removeprefix(f"{key}: ")))
    machines, workers = int(values.get("num_machines") or 1), int(values.get("num_processes") or 1)
    if machines > workers:
        problems.append(
            (
                "num_machines",
                f"{machines} machines for {workers} Train worker(s) (num_processes): each "
                "machine needs at least one worker; raise num_processes or lower num_machines",
            )
        )
    return problems


def cache_actor_request(
    options: Mapping[str, Any], nodes: Sequence[Mapping[str, float]]
) -> ActorRequest:
    """The request of every caching actor pool, for a cluster whose alive nodes hold
    ``nodes`` (each node's total resources).

    ``cache_num_gpus: auto`` gives each actor a GPU when any node has one. The pool may
    grow to ``cache_max_actors``, else to as many actors as the nodes up now can hold (at
    least one: an autoscaler brings up a node for it).
    """
    gpus = parse_gpus(options.get("cache_num_gpus"))
    if gpus is None:
        gpus = 1.0 if any(node.get("GPU", 0) > 0 for node in nodes) else 0.0
    request = ActorRequest(
        num_gpus=gpus,
        resources=parse_resources(options.get("cache_resources"), "cache_resources"),
        accelerator_type=options.get("cache_accelerator_type") or None,
    )
    wanted = options.get("cache_max_actors")
    size = int(wanted) if wanted else max(actors_that_fit(request.node_demand(), nodes), 1)
    return ActorRequest(request.num_gpus, request.resources, request.accelerator_type, size)


def actors_that_fit(demand: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> int:
    """How many actors asking ``demand`` fit the nodes. A request for nothing special
    (CPU only) counts as one: encoders on CPUs compete with the CPU stages of the pipeline."""
    if not demand:
        return 1
    total = 0
    for node in nodes:
        total += min(
            math.floor(node.get(name, 0.0) / amount + 1e-9) for name, amount in demand.items()
        )
    return total


@dataclass(frozen=True)
class WorkerCpus:
    """The CPUs each Train worker asks for, and why (for the plan printout)."""

    cpus: int
    reason: str


def train_worker_cpus(
    options: Mapping[str, Any], use_gpu: bool, nodes: Sequence[Mapping[str, float]]
) -> WorkerCpus:
    """``cpus_per_worker``, with ``auto`` resolved for the alive ``nodes``.

    ``auto``: on every node that can host a worker (its GPUs, ``train_resources`` and
    ``train_accelerator_type`` allow one), the node's CPUs divided by the most workers it may
    hold (all of them, up to what its GPUs or custom resources allow: PACK fills a node, and a
    group restarted after losing a node packs onto fewer); the smallest such share, so the
    group fits wherever Ray puts it. STRICT_SPREAD holds one worker per node. Ray Train's
    controller and the driver reserve no CPU, so a worker may take its whole share.
    """
    explicit = parse_cpus(options.get("cpus_per_worker"))
    if explicit is not None:
        return WorkerCpus(explicit, "set by cpus_per_worker")
    workers = int(options.get("num_processes") or 1)
    demand = train_worker_resources({**options, "cpus_per_worker": 1}, use_gpu)
    demand.pop("CPU")
    accelerator = options.get("train_accelerator_type")
    if accelerator:
        demand[f"accelerator_type:{accelerator}"] = ACCELERATOR_SHARE
    one_per_node = options.get("placement_strategy") == "STRICT_SPREAD"
    shares = []
    for node in nodes:
        slots = actors_that_fit(demand, [node]) if demand else workers
        if slots < 1 or node.get("CPU", 0) < 1:
            continue
        per_node = 1 if one_per_node else min(workers, slots)
        shares.append((int(node["CPU"] // per_node), int(node["CPU"]), per_node))
    if not shares:
        return WorkerCpus(1, "auto: no node that can host a worker is up yet, so 1")
    cpus, node_cpus, per_node = min(shares)
    if cpus < 1:
        return WorkerCpus(1, f"auto: {node_cpus} CPUs for {per_node} workers on a node, so 1")
    many = " (the smallest share over the nodes that can host one)" if len(shares) > 1 else ""
    return WorkerCpus(cpus, f"auto: {node_cpus} CPUs of a node / {per_node} worker(s) on it{many}")


def train_worker_resources(
    options: Mapping[str, Any], use_gpu: bool, nodes: Sequence[Mapping[str, float]] = ()
) -> dict[str, float]:
    """``resources_per_worker`` of the Train ScalingConfig (``nodes``: to resolve
    ``cpus_per_worker: auto``)."""
    cpus = parse_cpus(options.get("cpus_per_worker"))
    if cpus is None:
        cpus = train_worker_cpus(options, use_gpu, nodes).cpus
    resources: dict[str, float] = {"CPU": cpus}
    if use_gpu:
        resources["GPU"] = 1
    resources.update(parse_resources(options.get("train_resources"), "train_resources"))
    return resources


def local_storage_warning(run_storage: str, node_count: int) -> str | None:
    """Checkpoints on a local path are only visible to every node when the path is a shared
    filesystem: say so when the cluster has more than one node."""
    if node_count <= 1 or "://" in run_storage:
        return None
    return (
        f"warning: run_storage_path '{run_storage}' is a local path and the Ray cluster has "
        f"{node_count} nodes: a worker restarted on another node only finds the checkpoints if "
        "that path is a filesystem every node mounts (NFS, ...); use s3://bucket/prefix "
        "otherwise (see clusters/README.md)"
    )


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected Ray cluster."""
    import ray

    if not ray.is_initialized():
        return []
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def machines_problem(
    num_machines: int,
    num_workers: int,
    worker: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]],
) -> str | None:
    """``num_machines``: the run expects its workers on that many nodes. Ray places them
    itself; this says why the cluster cannot hold them (None when it can): too few alive nodes
    that fit a worker, or too few worker slots in all."""
    if num_machines <= 1:
        return None
    able = [node for node in nodes if actors_that_fit(worker, [node]) >= 1]
    slots = actors_that_fit(worker, able) if able else 0
    shown = ", ".join(f"{k} {v:g}" for k, v in sorted(worker.items()))
    if len(able) < num_machines:
        return (
            f"num_machines is {num_machines}, but the Ray cluster has {len(able)} alive "
            f"node(s) that can hold a Train worker ({shown}) out of {len(nodes)}; start the "
            "missing nodes (autoscaling clusters: before the run) or lower num_machines"
        )
    if slots < num_workers:
        return (
            f"num_processes is {num_workers}, but the {len(able)} node(s) that fit a Train "
            f"worker ({shown}) hold only {slots}"
        )
    return None

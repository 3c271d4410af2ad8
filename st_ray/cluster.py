"""Connecting to Ray: join the cluster a job was submitted to, else start a local one."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def connect(options: Mapping[str, Any]) -> None:
    """``ray_address`` when set; else RAY_ADDRESS (``ray job submit`` sets it for the job);
    else the cluster this machine is a node of (the one ``ray start`` last started here);
    else a local Ray instance on this machine. Prints which cluster the job runs on."""
    import ray

    if ray.is_initialized():
        return
    address = options.get("ray_address") or os.environ.get("RAY_ADDRESS")
    ray.init(
        address=address, include_dashboard=False, configure_logging=True, logging_level="WARNING"
    )
    print(describe_cluster(ray.get_runtime_context().gcs_address, ray.nodes()), flush=True)


def describe_cluster(address: str, nodes: list[dict[str, Any]]) -> str:
    """One line: where the cluster is and what its alive nodes hold."""
    alive = [n["Resources"] for n in nodes if n.get("Alive")]
    cpus = sum(r.get("CPU", 0) for r in alive)
    gpus = sum(r.get("GPU", 0) for r in alive)
    types = sorted(
        {
            k.removeprefix("accelerator_type:")
            for r in alive
            for k in r
            if k.startswith("accelerator_type:")
        }
    )
    kinds = f" ({', '.join(types)})" if types else ""
    return (
        f"Ray cluster {address}: {len(alive)} node{'s' if len(alive) != 1 else ''}, "
        f"{cpus:g} CPUs, {gpus:g} GPUs{kinds}"
    )

"""Connecting to Ray: join the cluster a job was submitted to, else start a local one."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

from st_ray import quiet
from st_ray.config.errors import ConfigError, Problem

PROBE_TIMEOUT_S = 5.0  # a dead head refuses at once; an unreachable host times out here


def connect(options: Mapping[str, Any]) -> None:
    """``ray_address`` when set; else RAY_ADDRESS (``ray job submit`` sets it for the job);
    else the cluster this machine is a node of (the one ``ray start`` last started here);
    else a local Ray instance on this machine. Prints which cluster the job runs on.

    The address is probed first (Ray itself retries a dead GCS for minutes): a named one that
    does not answer is a configuration error; a discovered one (a ``ray start`` head that has
    since died) is skipped with a warning and a local Ray instance is started instead."""
    import ray

    if ray.is_initialized():
        return
    address, source = chosen_address(options)
    if address is not None and not reachable(address):
        if source == "discovered":
            print(
                f"warning: the Ray cluster {address} that `ray start` recorded on this machine "
                f"({discovered_address_file()}) does not answer; starting a local Ray instance "
                "instead. Set ray_address (or RAY_ADDRESS) to join a cluster elsewhere.",
                file=sys.stderr,
                flush=True,
            )
            address = "local"
        else:
            raise ConfigError(
                [
                    Problem(
                        source,
                        None,
                        f"no Ray cluster answers at '{address}' (nothing accepted a connection "
                        f"within {PROBE_TIMEOUT_S:g} s). Start it (`ray start --head`), fix the "
                        "address, or unset it to run on a local Ray instance.",
                    )
                ]
            )
    ray.init(address=address, **init_settings())
    quiet.quiet_ray_data()
    print(describe_cluster(ray.get_runtime_context().gcs_address, ray.nodes()), flush=True)


def init_settings() -> dict[str, Any]:
    """``ray.init`` keyword arguments of an st_ray driver (jobs/train.py, the benchmarks): no
    dashboard (a local instance then runs only the processes Ray itself needs), Ray's own
    driver logging at warnings, every worker process of the job quieted."""
    return {
        "include_dashboard": False,
        "configure_logging": True,
        "logging_level": "WARNING",
        **quiet.ray_init_settings(),
    }


def chosen_address(options: Mapping[str, Any]) -> tuple[str | None, str]:
    """(address, where it came from): the ``ray_address`` option, RAY_ADDRESS, the address
    ``ray start`` recorded on this machine ("discovered"), or (None, "local")."""
    if options.get("ray_address"):
        named, source = str(options["ray_address"]), "ray_address"
    elif os.environ.get("RAY_ADDRESS"):
        named, source = os.environ["RAY_ADDRESS"], "RAY_ADDRESS (environment)"
    else:
        found = recorded_address()
        return (found, "discovered") if found else (None, "local")
    if named == "auto":  # join the cluster ray start recorded; it must be there
        return recorded_address() or named, source
    return named, source


def discovered_address_file() -> str:
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def recorded_address() -> str | None:
    """The GCS address of the last ``ray start`` on this machine (under RAY_TMPDIR)."""
    try:
        with open(discovered_address_file(), encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def reachable(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts a TCP connection at the address's host:port. Addresses
    that are not host:port (``local``, ``auto`` with nothing recorded) are left to Ray."""
    host_port = address.removeprefix("ray://").rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit() or "/" in host_port:
        return True
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


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

"""A multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``: one raylet per
node) running st_ray's caching and training the way a heterogeneous cloud cluster would;
run by tests/test_multinode.py in a process of its own, which asserts on what this script
records (a JSON file). Not a test module itself.

Nodes (logical resources; this machine has no GPU, torch computes on CPU):
  head        1 CPU                                      driver, CPU stages of Ray Data
  t4          1 CPU, 1 GPU, accelerator_type:T4          the cheap GPU that caches
  h100-a/b    2 CPUs, 2 GPUs, accelerator_type:H100, trainer: 2   the training nodes (two
              workers, SPREAD: one per node; a worker's node is removed mid-run, and the
              restarted group fits on the node left)

    python tests/multinode_scenario.py spec.json
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

TRAIN_NODE = {"num_cpus": 2, "num_gpus": 2, "resources": {"accelerator_type:H100": 1, "trainer": 2}}


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    sys.path.insert(0, spec["repo"])
    import ray
    from ray.cluster_utils import Cluster

    from st_ray.cluster import connect
    from st_ray.data.pipeline import build_caches
    from st_ray.plan import build_plan
    from st_ray.train.trainer import fit

    record: dict[str, Any] = {}
    started = time.monotonic()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        nodes = {
            "head": cluster.head_node,
            "t4": cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:T4": 1}),
            "h100-a": cluster.add_node(**TRAIN_NODE),
            "h100-b": cluster.add_node(**TRAIN_NODE),
        }
        cluster.wait_for_nodes()
        # The job joins the running cluster through st_ray's own connect (ray_address).
        overrides = ["--ray_address", cluster.address, *spec["overrides"]]
        plan = build_plan(spec["config"], overrides, {})
        connect(plan.options)
        record["node_ids"] = {name: node.node_id for name, node in nodes.items()}
        record["seconds_to_cluster"] = time.monotonic() - started

        # -- caching on the T4 node -------------------------------------------------------
        report = build_caches(plan)
        record["cache"] = {
            "encoded": sum(d.encoded for d in report.datasets),
            "captions_encoded": report.captions_encoded,
            "actors": _actor_nodes("MapWorker"),
        }
        record["seconds_to_cached"] = time.monotonic() - started
        _save(spec, record)

        # -- training on the H100 nodes; one of them goes away mid-run ----------------------
        removal = threading.Thread(
            target=_remove_a_training_node, args=(cluster, nodes, spec, record), daemon=True
        )
        removal.start()
        result = fit(plan)
        removal.join(timeout=60)
        record["train"] = {
            "step": result.metrics.get("step"),
            "checkpoint": result.checkpoint,
            "workers": _actor_nodes("RayTrainWorker"),
        }
        record["seconds_total"] = time.monotonic() - started
    finally:
        _save(spec, record)
        ray.shutdown()
        cluster.shutdown()


def _save(spec: dict[str, Any], record: dict[str, Any]) -> None:
    Path(spec["record"]).write_text(json.dumps(record, indent=2))


def _actor_nodes(class_fragment: str) -> list[dict[str, str]]:
    """Every actor (alive or dead) whose class name contains ``class_fragment``: id, class,
    node, state (from the GCS actor table)."""
    import ray

    return [
        {
            "id": actor_id,
            "class": info["ActorClassName"],
            "node": info["Address"]["NodeID"],
            "state": info["State"],
        }
        for actor_id, info in ray._private.state.actors().items()
        if class_fragment in info["ActorClassName"]
    ]


def _registered_checkpoints(spec: dict[str, Any]) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=spec["endpoint"])
    key = f"{spec['run_prefix']}/checkpoint_manager_snapshot.json"
    try:
        body = client.get_object(Bucket=spec["bucket"], Key=key)["Body"].read()
        snapshot = json.loads(body)
    except Exception:  # not written yet (NoSuchKey) or caught mid-write
        return []
    return [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]


def _remove_a_training_node(cluster, nodes, spec, record) -> None:
    """Once the controller has registered a checkpoint in S3, remove the node of a running
    Train worker: its raylet and every process on it, as when a spot VM goes away."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        registered = _registered_checkpoints(spec)
        workers = [w for w in _actor_nodes("RayTrainWorker") if w["state"] == "ALIVE"]
        if registered and len(workers) == 2:
            victim = next(n for n, node in nodes.items() if node.node_id == workers[0]["node"])
            record["removal"] = {
                "node": victim,
                "registered_before": registered,
                "workers_before": workers,
            }
            print(f"scenario: removing {victim} after {registered}", flush=True)
            cluster.remove_node(nodes[victim])
            print(f"scenario: removed {victim}", flush=True)
            return
        time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1])

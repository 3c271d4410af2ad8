"""Multi-node behaviour on one machine: a ``ray.cluster_utils.Cluster`` of four raylets (a
head, a "T4" caching node, two "H100" training nodes; logical GPUs), run in a process of its
own by tests/multinode_scenario.py. Caches and run storage live on a real S3-compatible
server (moto on loopback), the only place every node shares. Asserts: the caching actors ran
only on the node of the requested accelerator type; the two Train workers ran on different
nodes; a training node removed mid-run was recovered from the latest checkpoint in S3 on a
training node left, and the run finished with the exact step count."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from st_ray import zoo
from tests.ray_processes import (
    REPO,
    end_leftovers,
    end_process_group,
    isolated_env,
    private_ray_tmp,
)
from tests.test_training import _write_config

pytestmark = pytest.mark.slow

STEPS = 16  # room for the node to go before the last checkpoint on a fast machine
RUN = "multinode"
SCENARIO_TIMEOUT_S = 300


def test_multinode_caching_placement_spread_and_node_loss(
    tmp_path: Path, zoo_root: Path, example_dataset, s3_server
) -> None:
    bucket = s3_server.create_bucket()
    model = zoo.ensure("sd2x", zoo_root)
    config = _write_config(
        tmp_path, model, example_dataset.images_dir, "sd2x", tracker_run_name=RUN
    )
    # Caches on S3 too: Train workers on any node read them.
    datasets_file = tmp_path / "sd2x-datasets.json"
    datasets = json.loads(datasets_file.read_text())
    datasets[0]["cache_dir_vae"] = f"s3://{bucket}/cache/vae"
    datasets[1]["cache_dir"] = f"s3://{bucket}/cache/text"
    datasets_file.write_text(json.dumps(datasets))
    out = tmp_path / "out"
    spec = {
        "repo": str(REPO),
        "config": str(config),
        "record": str(tmp_path / "record.json"),
        "bucket": bucket,
        "endpoint": s3_server.endpoint_url,
        "run_prefix": f"runs/{RUN}",
        "overrides": [
            "--output_dir", str(out),
            "--s3_endpoint_url", s3_server.endpoint_url,
            "--run_storage_path", f"s3://{bucket}/runs",
            "--cache_accelerator_type", "T4",
            "--use_gpu", "false",  # the "GPUs" are logical: torch here has no CUDA
            "--num_processes", "2",
            "--placement_strategy", "SPREAD",
            "--train_resources", '{"trainer": 1}',
            "--max_failures", "2",
            "--max_train_steps", str(STEPS),
        ],
    }  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))

    log_path = tmp_path / "scenario.log"
    with private_ray_tmp() as ray_tmp, open(log_path, "wb") as log:
        env = isolated_env(ray_tmp, **s3_server.env())
        scenario = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "multinode_scenario.py"), str(tmp_path / "spec.json")],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            scenario.wait(timeout=SCENARIO_TIMEOUT_S)
        finally:
            end_process_group(scenario, grace_s=5)
            end_leftovers(ray_tmp)
    output = log_path.read_text(errors="replace")
    assert scenario.returncode == 0, output[-6000:]
    record = json.loads((tmp_path / "record.json").read_text())
    ids = record["node_ids"]
    name_of = {node_id: name for name, node_id in ids.items()}

    # Caching: every encoder actor (VAE and text pools) on the T4 node, although the H100
    # nodes had free GPUs too.
    cache = record["cache"]
    assert cache["encoded"] == 15 and cache["captions_encoded"] == 17
    classes = {a["class"] for a in cache["actors"]}
    assert any("VaeEncoder" in c for c in classes) and any("TextEncoder" in c for c in classes)
    assert {name_of[a["node"]] for a in cache["actors"]} == {"t4"}

    # Training spread over the two training nodes (one worker each).
    assert "removal" in record, "training finished before a node could be removed"
    removal = record["removal"]
    before = [name_of[w["node"]] for w in removal["workers_before"]]
    assert sorted(before) == ["h100-a", "h100-b"]
    assert removal["registered_before"], "the node went before any checkpoint"
    assert f"checkpoint-{STEPS}" not in removal["registered_before"]

    # After the removal, a new worker group, both on the training node left: never on the
    # removed node, nor on the head or the caching node.
    left = ({"h100-a", "h100-b"} - {removal["node"]}).pop()
    first_ids = {w["id"] for w in removal["workers_before"]}
    after = [name_of[w["node"]] for w in record["train"]["workers"] if w["id"] not in first_ids]
    assert after == [left, left]

    # Resumed from the latest checkpoint in S3, finished with the exact step count.
    train = record["train"]
    assert train["step"] == STEPS
    assert train["checkpoint"] == f"{bucket}/runs/{RUN}/checkpoint-{STEPS}"
    resumed = re.findall(rf"resuming from checkpoint {bucket}/runs/{RUN}/checkpoint-(\d+)", output)
    assert resumed, output[-5000:]
    latest_before = max(int(c.removeprefix("checkpoint-")) for c in removal["registered_before"])
    resumed_at = int(resumed[-1])
    assert latest_before <= resumed_at < STEPS
    client = s3_server.client()
    manifest = client.get_object(
        Bucket=bucket, Key=f"runs/{RUN}/checkpoint-{STEPS}/checkpoint_manifest.json"
    )
    assert json.loads(manifest["Body"].read())["progress"]["global_step"] == STEPS
    assert not (out / "ray_runs").exists()  # nothing went to a node-local default

    import mlflow

    tracking = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = tracking.search_runs([e.experiment_id for e in tracking.search_experiments()])
    logged = [m.step for m in tracking.get_metric_history(run.info.run_id, "loss")]
    assert sorted(set(logged)) == list(range(1, STEPS + 1))
    assert all(logged.count(step) == 1 for step in range(1, resumed_at + 1))
    print(
        f"multinode: cluster up {record['seconds_to_cluster']:.0f}s, cached "
        f"{record['seconds_to_cached']:.0f}s, total {record['seconds_total']:.0f}s; removed "
        f"{removal['node']} after {removal['registered_before']}, resumed at {resumed_at}"
    )

"""Where caching actors and Train workers ask to run: pure functions of the options and the
cluster's node resources (the multi-node behaviour itself is in test_multinode.py)."""

from __future__ import annotations

import json

import pytest

from st_ray.cluster import describe_cluster
from st_ray.placement import (
    ActorRequest,
    actors_that_fit,
    cache_actor_request,
    local_storage_warning,
    machines_problem,
    train_worker_cpus,
    train_worker_resources,
)

CPU_NODE = {"CPU": 8.0}
L4_NODE = {"CPU": 4.0, "GPU": 1.0, "accelerator_type:L4": 1.0}
A100_NODE = {"CPU": 96.0, "GPU": 8.0, "accelerator_type:A100": 1.0, "trainer": 1.0}
HETEROGENEOUS = [CPU_NODE, L4_NODE, L4_NODE, L4_NODE, A100_NODE]


def test_auto_gpus_follow_the_cluster() -> None:
    on_cpus = cache_actor_request({"cache_num_gpus": "auto"}, [CPU_NODE, CPU_NODE])
    assert (on_cpus.num_gpus, on_cpus.max_actors) == (0.0, 1)
    # Any GPU: one per actor, as many actors as GPUs (3 L4 + 8 A100).
    anywhere = cache_actor_request({"cache_num_gpus": "auto"}, HETEROGENEOUS)
    assert (anywhere.num_gpus, anywhere.max_actors) == (1.0, 11)


def test_accelerator_type_keeps_caching_on_the_cheap_gpus() -> None:
    request = cache_actor_request({"cache_accelerator_type": "L4"}, HETEROGENEOUS)
    assert request.max_actors == 3  # the three L4s, none of the A100s
    args = request.map_batches_args()
    assert args["accelerator_type"] == "L4" and args["num_gpus"] == 1.0
    assert args["compute"].min_size == 1 and args["compute"].max_size == 3
    assert request.node_demand() == {"GPU": 1.0, "accelerator_type:L4": 0.001}


def test_fractional_gpus_custom_resources_and_an_explicit_pool_bound() -> None:
    shared = cache_actor_request(
        {"cache_num_gpus": "0.5", "cache_accelerator_type": "L4"}, HETEROGENEOUS
    )
    assert shared.max_actors == 6  # two actors per L4
    pinned = cache_actor_request(
        {"cache_num_gpus": "0", "cache_resources": {"cache_node": 1}},
        [CPU_NODE, {**CPU_NODE, "cache_node": 2.0}],
    )
    assert (pinned.num_gpus, pinned.resources, pinned.max_actors) == (0.0, {"cache_node": 1.0}, 2)
    assert pinned.map_batches_args()["resources"] == {"cache_node": 1.0}
    # Autoscaling: no L4 node is up yet; the pool may still grow to what was asked for.
    later = cache_actor_request({"cache_accelerator_type": "L4", "cache_max_actors": 4}, [CPU_NODE])
    assert later.max_actors == 4
    assert cache_actor_request({"cache_accelerator_type": "L4"}, [CPU_NODE]).max_actors == 1


def test_actors_that_fit_counts_per_node() -> None:
    # 1.5 GPUs per actor: one per 2-GPU node, not 4 // 1.5 = 2 over the cluster.
    assert actors_that_fit({"GPU": 1.5}, [{"GPU": 2.0}, {"GPU": 2.0}]) == 2
    assert actors_that_fit({}, HETEROGENEOUS) == 1
    assert ActorRequest(num_gpus=0.0).node_demand() == {}


def test_train_worker_resources() -> None:
    options = {"cpus_per_worker": 4, "train_resources": json.dumps({"trainer": 1})}
    assert train_worker_resources(options, True) == {"CPU": 4, "GPU": 1, "trainer": 1.0}
    assert train_worker_resources({"cpus_per_worker": 1}, False) == {"CPU": 1}


def test_auto_cpus_per_worker_divides_each_node_among_its_workers() -> None:
    def cpus(nodes, **options):
        return train_worker_cpus({"cpus_per_worker": "auto", **options}, True, nodes).cpus

    # 8 GPU workers fill the A100 node: 96 CPUs / 8. The L4 nodes could also host a worker
    # (4 CPUs, 1 GPU): the smallest share is what every worker can have.
    assert cpus([A100_NODE], num_processes=8) == 12
    assert cpus(HETEROGENEOUS, num_processes=8) == 4
    # Only nodes that can host a worker count: its accelerator type or custom resources.
    assert cpus(HETEROGENEOUS, num_processes=2, train_accelerator_type="A100") == 48
    assert cpus(HETEROGENEOUS, num_processes=8, train_resources={"trainer": 0.125}) == 12
    # CPU-only workers may all pack onto one node; STRICT_SPREAD holds one per node.
    cpu_only = {"cpus_per_worker": "auto", "num_processes": 2}
    assert train_worker_cpus(cpu_only, False, [CPU_NODE, CPU_NODE]).cpus == 4
    spread = {**cpu_only, "placement_strategy": "STRICT_SPREAD"}
    assert train_worker_cpus(spread, False, [CPU_NODE, CPU_NODE]).cpus == 8
    # Nothing up that can host one (an autoscaler brings it later), more GPUs than CPUs.
    assert cpus([CPU_NODE], num_processes=1) == 1
    assert cpus([{"CPU": 2.0, "GPU": 4.0}], num_processes=4) == 1
    # An explicit number is kept, and asked of Ray as is.
    assert train_worker_cpus({"cpus_per_worker": "3"}, True, HETEROGENEOUS).cpus == 3
    assert train_worker_resources({"cpus_per_worker": "auto"}, False, [CPU_NODE]) == {"CPU": 8}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--cache_num_gpus", "lots"], "cache_num_gpus: 'lots' is not a number"),
        (["--cache_num_gpus", "1.5"], "not a valid GPU count"),
        (["--cpus_per_worker", "0"], "cpus_per_worker: '0' is not a CPU count"),
        (["--cache_resources", '{"GPU": 1}'], "'GPU' is one of Ray's built-in resources"),
        (["--train_resources", '{"trainer": -1}'], "'trainer' must be a number >= 0"),
        (["--train_resources", "[1, 2]"], "expected a JSON object"),
        (["--placement_strategy", "RANDOM"], "placement_strategy"),
        (["--num_machines", "2"], "num_machines: 2 machines for 1 Train worker(s)"),
    ],
)
def test_bad_placement_options_are_refused_before_ray(tmp_path, override, message) -> None:
    from st_ray.config.errors import ConfigError
    from st_ray.plan import build_plan

    (tmp_path / "data").mkdir()
    (tmp_path / "datasets.json").write_text(
        json.dumps([{"id": "d", "type": "local", "instance_data_dir": str(tmp_path / "data")}])
    )
    config = {
        "model_family": "sd1x",
        "pretrained_model_name_or_path": "some/model",
        "data_backend_config": str(tmp_path / "datasets.json"),
        "output_dir": str(tmp_path / "out"),
        "max_train_steps": 1,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        build_plan(tmp_path / "config.json", override, {})
    assert message in err.value.render()


def test_num_machines_is_checked_against_the_nodes_that_fit_a_worker() -> None:
    gpu_worker = {"CPU": 4.0, "GPU": 1.0}
    assert machines_problem(1, 8, gpu_worker, []) is None  # one machine: nothing to check
    assert machines_problem(2, 2, gpu_worker, [L4_NODE, L4_NODE]) is None
    # The CPU-only node cannot hold a GPU worker.
    short = machines_problem(3, 3, gpu_worker, [CPU_NODE, L4_NODE, L4_NODE])
    assert (
        short
        and "has 2 alive node(s) that can hold a Train worker (CPU 4, GPU 1) out of 3" in short
    )
    assert short is not None and "start the missing nodes" in short
    # Two nodes, but one GPU each: four workers do not fit.
    slots = machines_problem(2, 4, gpu_worker, [L4_NODE, L4_NODE])
    assert slots is not None and "hold only 2" in slots
    assert machines_problem(2, 9, gpu_worker, [A100_NODE, L4_NODE]) is None


def test_fit_refuses_more_machines_than_the_cluster_has(ray_local, tmp_path) -> None:
    """Read by the code that runs: fit() on the session's one-node Ray refuses num_machines 2
    with a clear error before any Train worker starts."""
    from st_ray.config.errors import ConfigError
    from st_ray.plan import build_plan
    from st_ray.train.trainer import fit

    (tmp_path / "data").mkdir()
    (tmp_path / "datasets.json").write_text(
        json.dumps([{"id": "d", "type": "local", "instance_data_dir": str(tmp_path / "data")}])
    )
    config = {
        "model_family": "sd1x",
        "pretrained_model_name_or_path": "some/model",
        "data_backend_config": str(tmp_path / "datasets.json"),
        "output_dir": str(tmp_path / "out"),
        "num_processes": 2,
        "num_machines": 2,
        "use_gpu": "false",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="num_machines is 2, but the Ray cluster has 1 alive"):
        fit(build_plan(tmp_path / "config.json", [], {}))


def test_local_run_storage_on_several_nodes_is_warned_about() -> None:
    assert local_storage_warning("/data/runs", 1) is None
    assert local_storage_warning("s3://bucket/runs", 4) is None
    warning = local_storage_warning("/data/runs", 3)
    assert "3 nodes" in warning and "s3://" in warning


def test_describe_cluster() -> None:
    nodes = [
        {"Alive": True, "Resources": L4_NODE},
        {"Alive": True, "Resources": A100_NODE},
        {"Alive": False, "Resources": A100_NODE},
    ]
    assert describe_cluster("10.0.0.1:6379", nodes) == (
        "Ray cluster 10.0.0.1:6379: 2 nodes, 100 CPUs, 9 GPUs (A100, L4)"
    )

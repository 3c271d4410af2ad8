"""The cluster definitions in clusters/: launcher YAMLs valid against the JSON schema that
ships inside Ray (and Ray's own config checks), KubeRay manifests with the structure KubeRay
needs and every reference resolved (repo paths, volumes, ConfigMap, PVC, service account),
the example config valid for st_ray, and no credentials in any of them."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTERS = REPO / "clusters"
LAUNCHER = ["aws-gpu.yaml", "gcp-gpu.yaml"]
KUBERAY = CLUSTERS / "kuberay"


def _load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_yaml_is_valid_for_ray(name: str) -> None:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTERS / name).read_text())
    jsonschema.validate(raw, _ray_schema())  # as written
    validate_config(prepare_config(copy.deepcopy(raw)))  # as `ray up` fills it out

    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    cache, train = types["gpu-cache-l4"], types["gpu-train-a100"]
    assert cache["resources"]["GPU"] == 1 and cache["resources"]["accelerator_type:L4"] == 1
    assert train["resources"]["GPU"] == 8 and train["resources"]["accelerator_type:A100"] == 1
    for node_type in (cache, train):
        assert 0 == node_type["min_workers"] < node_type["max_workers"]
        config = node_type["node_config"]
        spot = config.get("InstanceMarketOptions", {}).get("MarketType") == "spot" or (
            config.get("scheduling", {}).get("provisioningModel") == "SPOT"
        )
        assert spot, f"{name}: GPU workers should be spot/preemptible"
    assert cache["max_workers"] + train["max_workers"] <= raw["max_workers"]
    # This checkout is synced to the nodes and installed there.
    assert raw["file_mounts"] == {"~/st_ray": "."}
    setup = " ".join(raw["head_setup_commands"] + raw["worker_setup_commands"])
    assert setup.count("-e ~/st_ray") == 2 and "torch==2.13.0" in setup
    assert "--python 3.11" in " ".join(raw["setup_commands"])


def _kuberay_spec(kind: str) -> dict:
    (doc,) = _load(KUBERAY / f"{kind.lower()}.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    return doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _pod_specs(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in spec["workerGroupSpecs"]
    ]


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_manifest_structure_and_references(kind: str) -> None:
    spec = _kuberay_spec(kind)
    prerequisites = {
        (d["kind"], d["metadata"]["name"]) for d in _load(KUBERAY / "prerequisites.yaml")
    }
    assert spec["rayVersion"] == "2.60.0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu-cache-l4", "gpu-train-a100"}
    for params in [spec["headGroupSpec"]["rayStartParams"]] + [
        g["rayStartParams"] for g in groups.values()
    ]:
        assert all(isinstance(v, str) for v in params.values())  # KubeRay wants strings
    for name, gpus, accelerator in (("gpu-cache-l4", 1, "L4"), ("gpu-train-a100", 8, "A100")):
        group = groups[name]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        # The resource string KubeRay hands to `ray start --resources`: JSON inside quotes.
        declared = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert declared == {f"accelerator_type:{accelerator}": 1}
        (container,) = group["template"]["spec"]["containers"]
        resources = container["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
        assert resources["limits"]["nvidia.com/gpu"] == gpus
    images = set()
    for pod in _pod_specs(spec):
        assert ("ServiceAccount", pod["serviceAccountName"]) in prerequisites
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            images.add(container["image"])
            for mount in container["volumeMounts"]:
                assert mount["name"] in volumes, mount
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in prerequisites
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in prerequisites
    assert len(images) == 1  # one image, built from clusters/kuberay/Dockerfile


def test_rayjob_runs_train_from_the_image_and_matches_the_raycluster() -> None:
    (job,) = _load(KUBERAY / "rayjob.yaml")
    entrypoint = job["spec"]["entrypoint"]
    assert entrypoint.startswith("python /app/jobs/train.py --config ")
    for path in re.findall(r"/app/(\S+)", entrypoint):
        assert (REPO / path).exists(), f"rayjob.yaml references {path}, not in the repo"
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert set(runtime_env) <= {"env_vars", "working_dir", "pip", "excludes"}
    assert _kuberay_spec("RayJob") == _kuberay_spec("RayCluster")  # one definition, no drift
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    assert "FROM rayproject/ray:2.60.0-py311-gpu" in dockerfile
    assert (
        "COPY --chown=ray:users . /app" in dockerfile
        and "pip install --no-cache-dir -e /app" in dockerfile
    )


def test_every_path_the_cluster_files_name_exists() -> None:
    pattern = re.compile(r"(?<![\w/.-])((?:clusters|jobs|st_ray)/[\w./-]+\w)")
    named = set()
    for path in [*CLUSTERS.rglob("*.yaml"), CLUSTERS / "README.md", KUBERAY / "Dockerfile"]:
        named |= {(path.name, p) for p in pattern.findall(path.read_text())}
    assert named
    missing = [(where, p) for where, p in named if not (REPO / p).exists()]
    assert not missing, missing
    runtime_env = yaml.safe_load((CLUSTERS / "runtime-env.yaml").read_text())
    assert runtime_env["working_dir"] == "." and ".venv" in runtime_env["excludes"]


def test_example_config_is_valid_and_targets_the_node_types(monkeypatch) -> None:
    from st_ray.plan import build_plan

    env = {"ST_RAY_BUCKET": "my-bucket", "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"}
    plan = build_plan(CLUSTERS / "example" / "config.json", [], env)
    assert plan.run_storage == "s3://my-bucket/st_ray/runs"
    assert plan.options["cache_accelerator_type"] == "L4"
    assert plan.options["train_accelerator_type"] == "A100"
    assert plan.options["num_processes"] == 8  # one A100 node


SECRET_PATTERNS = (
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"(?i)(secret|password|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{12,}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
)


def test_no_credentials_in_cluster_files() -> None:
    for path in CLUSTERS.rglob("*"):
        if path.is_file():
            text = path.read_text()
            for pattern in SECRET_PATTERNS:
                assert not re.search(pattern, text), (path, pattern)

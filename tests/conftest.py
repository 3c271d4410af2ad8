"""Shared fixtures: offline Hugging Face settings, the tiny-model zoo and example data built
once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The composition root: the option catalog with every family's options, and every component's
# checks (tests that load configs through st_ray.config directly rely on it).
import st_ray.plan  # noqa: F401

pytest_plugins = [
    "tests.s3_server",
    "tests.eval_fixtures",
    "tests.hub_server",
    "tests.azure_server",
    "tests.dropbox_server",
]

# Nothing in the tests may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def family_cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the family tests keep each family's caches of the example dataset: built once
    (by whichever test needs a family first) and reused by the others, warm."""
    return tmp_path_factory.mktemp("family-caches")


@pytest.fixture(scope="session")
def example_dataset(tmp_path_factory: pytest.TempPathFactory):
    from st_ray import example_data

    return example_data.generate(tmp_path_factory.mktemp("example-data"))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance shared by every test that needs Ray (start-up costs seconds).
    A test that reached Ray without this fixture (st_ray.cluster.connect starts a local
    instance) already made one: it is reused."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()

"""Shared fixtures: the digits data and small trained base models, cached across runs.

Base models are cached in `.test-cache/` (ignored by git) by the same content hash
users get, so a second local run skips their training; CI trains them once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from prune_core import data as datasets
from prune_core.baseline import BaseSpec, get_base
from prune_core.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
TEST_CACHE = ROOT / ".test-cache"

# Two cores on CI: keep the test processes at the machine's width, never oversubscribed.
# `make test` runs pytest-xdist workers, which share the cores between them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))

# The base model most method tests start from: VGG-11 at width 0.25 on digits.
BASE_VGG = BaseSpec(model="vgg11", model_kw={"width": 0.25}, data="digits",
                    train=TrainConfig(epochs=12, lr=0.05, seed=0))


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """A test that changes torch's thread count (``prune-study trial`` in process runs on a
    study's count) must not change the float sums, and so the results, of later tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits() -> datasets.Data:
    return datasets.load("digits")


@pytest.fixture(scope="session")
def digits_split() -> datasets.Data:
    return datasets.load("digits-split")


@pytest.fixture(scope="session")
def base_vgg(digits):
    """A trained VGG-11 (width 0.25) on digits, about 98 % test accuracy."""
    base, _ = get_base(BASE_VGG, digits, TEST_CACHE, log=lambda _m: None)
    return base


@pytest.fixture(scope="session")
def test_cache() -> Path:
    TEST_CACHE.mkdir(exist_ok=True)
    return TEST_CACHE


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the tests of one module that run studies in this process."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_of_the_module():
    """For modules whose code starts a local Ray in this process (``studies.runner.connect``
    reuses a running one): shut down after the module, so later modules never inherit it."""
    yield
    import ray

    ray.shutdown()


# The test files that take longest, heaviest first (seconds on 2 busy cores, from
# `make test --durations=0`). `make test` hands whole files to its workers in collection
# order; starting with these keeps one worker from picking up a long file at the end while
# the other has nothing left to do. Files not named keep their order, after these.
HEAVY_FIRST = (
    "test_runner.py",  # 430 s
    "test_any_network.py",  # 420
    "test_benchmarks.py",  # 300
    "test_reproduce.py",  # 300: a study per seed, each rehearsed at validate
    "test_bench_studies.py",  # 240
    "test_bench_allocation.py",  # 150 (busy machine)
    "test_export.py",  # 200
    "test_sampler_studies.py",  # 190
    "test_driver.py",  # 120
    "test_progress.py",  # 100
    "test_bench_early_stop.py",  # 120
    "test_cluster.py",  # 100
    "test_methods_slimming.py",  # 90
    "test_sensitivity.py",  # 90: a scan on Ray, twice from its cache
    "test_bench_constraints.py",  # 90
    "test_postgres.py",  # 70
    "test_loggers.py",  # 70
    "test_bench_export.py",  # 60
    "test_bench_analysis.py",  # 50
    "test_methods_branch.py",  # 55
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole

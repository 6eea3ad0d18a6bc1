"""Shared fixtures. Ray starts once per test session: start-up costs seconds."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def _ensure_local_ray():
    import ray

    if not ray.is_initialized():
        # address="local": a fresh instance, never a cluster some other test left running
        # (hospital_slot: a custom resource for test_files_and_resources)
        ray.init(address="local", num_cpus=8, resources={"hospital_slot": 2}, include_dashboard=False,
                 logging_level="WARNING")
    return ray


def pytest_collection_modifyitems(config, items):
    """The order xdist hands modules out in (``--no-loadscope-reorder`` keeps it): modules
    that run on Ray first, those with the most such tests first, then the quick in-process
    modules, which fill the end so that both workers finish together. Tests marked
    ``restarts_ray`` (multi-node ``Cluster`` modules) replace the session's Ray: last, so
    no later test has to start Ray again or lose the warm pool workers."""
    uses_ray = {"ray_session", "_ray_shutdown_at_end", "ray_head"}
    on_ray = Counter(item.nodeid.split("::")[0] for item in items
                     if uses_ray & set(getattr(item, "fixturenames", ())))
    items.sort(key=lambda item: (item.get_closest_marker("restarts_ray") is not None,
                                 -on_ray[item.nodeid.split("::")[0]]))


@pytest.fixture(scope="session")
def _ray_shutdown_at_end():
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def ray_session(_ray_shutdown_at_end):
    """A real local Ray with enough logical CPUs for the integration tests' actors.

    Started once and reused; if a test module shut it down (multi-node ``Cluster`` tests
    need their own Ray), the next test that asks for it starts it again.
    """
    yield _ensure_local_ray()


def digits_config(hosting: str = "pool", **overrides) -> dict:
    """A small, fast digits run as a plain mapping; tests override what they need.

    Pooled by default: warm pool workers serve test after test
    (``orchestrator/cluster/warm_workers.py``); tests of dedicated actors or of ``auto``
    say so with ``hosting``."""
    config = {
        "name": "test",
        "seed": 0,
        "dataset": {"name": "digits", "partition": {"kind": "iid"}},
        "groups": [
            {
                "name": "site",
                "count": 4,
                "model": {"name": "mlp", "hidden": [32]},
                "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.1},
                "resources": {"num_cpus": 0.5},
                "hosting": hosting,
            }
        ],
        "stop": {"max_aggregations": 5},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def run_while(orch, act: Callable[[], bool], every: float = 0.02):
    """Run ``orch`` while a background thread calls ``act()`` every ``every`` seconds, until
    it returns True or the run ends: how failure tests inject real faults mid-run."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every):
            if act():
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        return orch.run()
    finally:
        done.set()
        thread.join()


def train_together(worker, state, instructions: list, specs: list) -> list:
    """Tasks sent to a PoolWorker as one cohort, each its own call in its own thread, as Ray runs them;
    each task's update or exception, in order."""
    results: list = [None] * len(specs)
    cohort = (instructions[0].task_id, len(specs))

    def task(i: int) -> None:
        try:
            results[i] = worker.train(specs[i], state, instructions[i], cohort)
        except Exception as exc:  # noqa: BLE001 - that task's outcome
            results[i] = exc

    threads = [threading.Thread(target=task, args=(i,)) for i in range(len(specs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results

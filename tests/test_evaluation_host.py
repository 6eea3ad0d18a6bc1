"""The global model is evaluated on a pool worker of the driver's node, so a driver on pool
workers never imports torch; without one (or once it died) the driver evaluates, with the
same numbers (orchestrator/server/evaluation_host.py)."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import digits_config

from actors.data.tables import DataError
from actors.participant.pool import PoolWorker
from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator
from orchestrator.server.evaluation_host import GlobalEvaluator, build_evaluator
from orchestrator.tools.cli import run_modules
from strategies.types import GlobalState

ROOT = Path(__file__).resolve().parents[1]


class Built:
    """Counts how often a worker builds it."""

    count = 0

    def __init__(self, value: int) -> None:
        Built.count += 1
        self.value = value

    def times(self, k: int) -> int:
        return self.value * k


def test_a_pool_worker_builds_a_hosted_object_once_per_key_and_forgets_it_on_reset():
    worker, Built.count = PoolWorker(), 0
    build = functools.partial(Built, 3)
    assert worker.host_call("run-a", build, "times", 2) == 6
    assert worker.host_call("run-a", build, "times", 5) == 15
    assert Built.count == 1
    assert worker.host_call("run-b", functools.partial(Built, 4), "times", 1) == 4
    assert Built.count == 2
    assert worker.reset()
    assert worker.host_call("run-a", build, "times", 1) == 3
    assert Built.count == 3  # a run after the reset builds its own


def _evaluation_setup():
    config = load_config(digits_config(stop={"max_aggregations": 1}))
    build = functools.partial(build_evaluator, config, "site", 10, None, ())
    local = build()
    params = np.random.default_rng(0).normal(0, 0.1, local.info().layout.size).astype(np.float32)
    return build, local, params


def test_without_a_host_the_driver_evaluates_with_the_evaluator_itself():
    build, local, params = _evaluation_setup()
    evaluator = GlobalEvaluator(build, [])
    assert evaluator.info == local.info()
    assert evaluator.info.num_examples > 0 and evaluator.info.target_std is not None
    np.testing.assert_equal(evaluator(params, evaluator.info.layout), local.metrics(params, local.layout))  # auroc: NaN


def test_a_pool_worker_evaluates_for_the_driver_and_a_killed_one_hands_back_to_it(ray_session):
    build, local, params = _evaluation_setup()
    expected = local.metrics(params, local.layout)
    worker = ray.remote(PoolWorker).options(num_cpus=0.5).remote()
    evaluator = GlobalEvaluator(build, [worker])
    assert evaluator.info == local.info()
    hosted = evaluator(params, local.layout)
    assert hosted["accuracy"] == expected["accuracy"]
    assert hosted["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert evaluator.local is None  # nothing built in the driver
    shipped = ray.put(GlobalState(3, params, local.layout))  # the broadcast: the worker reads params from it
    np.testing.assert_equal(evaluator(np.zeros_like(params), local.layout, shipped), hosted)
    ray.kill(worker, no_restart=True)  # a real crash of the host
    after = evaluator(params, local.layout, shipped)  # here: the params themselves
    assert evaluator.hosts == [] and evaluator.local is not None
    np.testing.assert_equal(after, expected)


def test_an_error_in_a_hosted_evaluator_arrives_as_itself(ray_session):
    def broken() -> None:
        raise DataError("evaluation: /data/test.csv has no column 'label'")

    worker = ray.remote(PoolWorker).options(num_cpus=0.5).remote()
    with pytest.raises(DataError, match=r"^evaluation: /data/test.csv has no column 'label'$"):
        GlobalEvaluator(broken, [worker])
    ray.kill(worker)


def test_a_pooled_run_evaluates_on_its_pool_worker_and_the_numbers_match_the_drivers(ray_session):
    orch = Orchestrator(load_config(digits_config(stop={"max_aggregations": 3})))
    history = orch.run()
    evaluator = orch.global_model.evaluator
    assert evaluator.hosts and evaluator.local is None  # every evaluation ran on a worker
    _, local, _ = _evaluation_setup()
    final = history[history.event == "evaluation"].iloc[-1]
    assert final.accuracy == local.metrics(orch.params, local.layout)["accuracy"]


def test_a_dedicated_run_evaluates_in_the_driver(ray_session):
    orch = Orchestrator(load_config(digits_config("dedicated", stop={"max_aggregations": 1})))
    orch.run()
    assert orch.global_model.evaluator.hosts == [] and orch.global_model.evaluator.local is not None


def test_the_drivers_run_modules_import_no_torch():
    """Ray imports a pool worker's module in the driver to give it a handle: it and the run
    loop must load without torch, or a warm run pays a second for it."""
    code = ("import sys, orchestrator.tools.cli, orchestrator.loop.run, actors.participant.pool; "
            "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['pandas']"]


@pytest.mark.parametrize(("groups", "strategy", "address", "torch"), [
    ([{"hosting": "pool"}], "fedavg", None, False),
    ([{"hosting": "pool"}, {"hosting": "dedicated"}], "fedavg", None, True),
    ([{"hosting": "auto"}], "fedavg", None, True),
    ([{"hosting": "auto"}], "fedavg", "auto", False),  # decided on joining: most often pools
    ([{"hosting": "pool"}], "feddf", None, True),  # server-side distillation in the driver
])
def test_fedray_run_imports_torch_behind_ray_only_where_the_driver_uses_it(groups, strategy, address, torch):
    raw = digits_config(strategy={"name": strategy}, ray={"address": address})
    raw["groups"] = [{**raw["groups"][0], "name": f"g{i}", **g} for i, g in enumerate(groups)]
    raw["dataset"]["public_size"] = 100  # FedDF distils on it
    assert ("torch" in run_modules(load_config(raw))) is torch

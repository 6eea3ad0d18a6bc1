"""Fractional GPUs: four participants share one GPU at ``num_gpus: 0.25`` each.

The GPU test needs a CUDA device that Ray can see and is skipped without one (this
machine has none: Ray's logical GPU count is 0). The CPU-fallback test always runs: a
participant given no GPU must train on the CPU even on a machine that has GPUs, because
Ray hides the devices from actors that did not ask for one.
"""

from __future__ import annotations

import pytest
import ray
import torch
from conftest import digits_config

from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator


def _run(num_gpus: float):
    config = digits_config(stop={"max_aggregations": 3})
    config["groups"][0]["resources"] = {"num_cpus": 0.5, "num_gpus": num_gpus}
    orchestrator = Orchestrator(load_config(config))
    history = orchestrator.run()
    return orchestrator.members_info, history


@pytest.mark.gpu
def test_four_participants_share_one_gpu_and_train_on_it(ray_session):
    if not torch.cuda.is_available() or ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("needs a CUDA GPU visible to Ray (none on this machine)")
    info, history = _run(num_gpus=0.25)

    assert len(info) == 4
    assert {i["device"] for i in info.values()} == {"cuda"}
    gpu_ids = [tuple(i["gpu_ids"]) for i in info.values()]
    assert all(len(ids) == 1 for ids in gpu_ids)
    assert len(set(gpu_ids)) == 1  # 4 x 0.25 of the same device
    assert all(i["assigned_resources"].get("GPU") == pytest.approx(0.25) for i in info.values())
    evals = history[history.event == "evaluation"]
    assert evals.accuracy.iloc[-1] > evals.accuracy.iloc[0]


def test_participants_without_a_gpu_fall_back_to_the_cpu(ray_session):
    info, history = _run(num_gpus=0.0)

    assert {i["device"] for i in info.values()} == {"cpu"}
    assert all(list(i["gpu_ids"]) == [] for i in info.values())
    assert (history.event == "aggregation").sum() == 3


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["scaffold", "ditto", "fedrep", "fedmd"])
def test_client_halves_run_on_the_gpu(ray_session, strategy):
    """Loss terms, control variates, personal models and distillation on a CUDA model."""
    if not torch.cuda.is_available() or ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("needs a CUDA GPU visible to Ray (none on this machine)")
    config = digits_config(stop={"max_aggregations": 2}, strategy={"name": strategy},
                           dataset={"name": "digits", "public_size": 60, "partition": {"kind": "iid"}})
    config["groups"][0]["resources"] = {"num_cpus": 0.5, "num_gpus": 0.25}
    orchestrator = Orchestrator(load_config(config))
    history = orchestrator.run()
    assert {i["device"] for i in orchestrator.members_info.values()} == {"cuda"}
    assert (history.event == "aggregation").sum() == 2
    assert not history.event.isin(["rejected", "failure"]).any(), history[history.event.isin(["rejected", "failure"])].detail


@pytest.mark.gpu
def test_a_participant_past_its_memory_cap_fails_alone(ray_session):
    """Two groups share one card at 0.25 each, capped at 1 GB; one group's model asks for
    2 GiB at every step. Those participants fail, each failure naming the participant and
    its cap, and the run goes on with the others' updates."""
    if not torch.cuda.is_available() or ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("needs a CUDA GPU visible to Ray (none on this machine)")
    config = digits_config(stop={"max_aggregations": 3}, schedule={"mode": "sync", "min_participants": 1})
    fine = config["groups"][0] | {"count": 2, "resources": {"num_cpus": 0.5, "num_gpus": 0.25, "gpu_memory_gb": 1.0}}
    greedy = fine | {"name": "greedy", "model": {"name": "tests.plugins:hungry", "gib": 2.0}}
    config["groups"] = [fine, greedy]
    history = Orchestrator(load_config(config)).run()

    failures = history[history.event == "failure"]
    assert set(failures.participant) == {"greedy-0", "greedy-1"}
    assert failures.detail.str.contains("ran out of GPU memory under its cap of 1 GB").all()
    assert (history.event == "aggregation").sum() == 3
    updates = history[history.event == "update"]
    assert set(updates.participant) == {"site-0", "site-1"}

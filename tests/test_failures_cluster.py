"""A node removed from a real multi-node ``ray.cluster_utils.Cluster`` mid-run.

This module needs its own Ray: it shuts the session's local Ray down first and leaves Ray
shut down at the end (the ``ray_session`` fixture starts it again for later tests).
"""

from __future__ import annotations

import pytest
import ray
from conftest import digits_config, run_while
from ray.cluster_utils import Cluster

from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator

TINY = {"model": {"name": "mlp", "hidden": [16]}, "train": {"local_steps": 4, "lr": 0.2},
        "system": {"simulated_seconds_per_sample": 0.002}}


pytestmark = pytest.mark.restarts_ray  # run last: conftest.pytest_collection_modifyitems

@pytest.fixture
def two_node_cluster():
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = cluster.add_node(num_cpus=2, resources={"far_site": 2})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_participants_on_a_removed_node_are_reported_lost_and_the_run_goes_on(two_node_cluster):
    cluster, worker = two_node_cluster
    raw = digits_config(
        groups=[
            {"name": "near", "count": 2, **TINY, "resources": {"num_cpus": 0.5}},
            {"name": "far", "count": 1, **TINY, "resources": {"num_cpus": 0.5, "resources": {"far_site": 1}}},
        ],
        stop={"max_aggregations": 6},
    )
    orch = Orchestrator(load_config(raw))
    removed_at: list[int] = []

    def remove_node_mid_run() -> bool:
        if getattr(orch, "version", 0) >= 2 and any(m.busy for m in orch.members.values()):
            removed_at.append(orch.version)
            cluster.remove_node(worker)
            return True
        return False

    history = run_while(orch, remove_node_mid_run)

    assert removed_at, "the node was never removed"
    assert history[history.event == "participant_lost"].participant.tolist() == ["far-0"]
    assert (history.event == "aggregation").sum() == 6
    updates = history[history.event == "update"]
    assert "far-0" in set(updates.participant)  # it took part before its node went away
    late = updates[updates.version > removed_at[0]]
    assert set(late.participant) <= {"near-0", "near-1"}
    assert orch.summary["participants_lost"] == 1

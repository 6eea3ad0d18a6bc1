"""Placement per group on a real multi-node Ray (``ray.cluster_utils.Cluster``).

Three simulated nodes carry the custom resources ``site_a``, ``site_b`` and ``site_c``.
The cluster is this module's own Ray: the fixture shuts the session's local Ray down
first, and ``ray_session`` in conftest starts it again for later modules.
"""

from __future__ import annotations

import time

import pytest
import ray
from conftest import digits_config
from ray.cluster_utils import Cluster

from orchestrator.cluster.placement import Placements
from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator, RunError

pytestmark = pytest.mark.restarts_ray  # run last: conftest.pytest_collection_modifyitems

@pytest.fixture(scope="module")
def three_sites():
    ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"site_a": 1}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2, resources={"site_b": 1})
    cluster.add_node(num_cpus=2, resources={"site_c": 1})
    ray.init(address=cluster.address, logging_level="WARNING")
    cluster.wait_for_nodes()
    try:
        yield {site: _node_with(site) for site in ("site_a", "site_b", "site_c")}
    finally:
        ray.shutdown()
        cluster.shutdown()


def _node_with(resource: str) -> str:
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(resource)]
    assert len(nodes) == 1
    return nodes[0]


def _config(group_overrides: dict, **top) -> dict:
    group = {
        "name": "clinic", "count": 3, "model": {"name": "mlp", "hidden": [16]},
        "train": {"local_steps": 2, "batch_size": 32}, "resources": {"num_cpus": 0.25},
        **group_overrides,
    }
    return digits_config(groups=[group], stop={"max_aggregations": 1}, **top)


def test_participants_pinned_to_site_b_all_run_on_that_node(three_sites, tmp_path):
    config = load_config(_config({"placement": {"node": "site_b"}}))
    orchestrator = Orchestrator(config, out_dir=tmp_path)
    history = orchestrator.run()

    nodes = {name: info["node_id"] for name, info in orchestrator.members_info.items()}
    assert len(nodes) == 3
    assert set(nodes.values()) == {three_sites["site_b"]}
    assert (history.event == "aggregation").sum() == 1


def test_strict_spread_placement_group_puts_each_participant_on_its_own_node(three_sites):
    config = load_config(_config({"placement": {"placement_group": "STRICT_SPREAD"}}))
    orchestrator = Orchestrator(config)
    orchestrator.run()

    nodes = [info["node_id"] for info in orchestrator.members_info.values()]
    assert sorted(nodes) == sorted(three_sites.values())
    # the run gave its reservation back
    assert not orchestrator.participants.placements.groups


def test_pack_placement_reserves_and_releases_a_placement_group(three_sites):
    config = load_config(_config({"placement": "pack"}))
    placements = Placements(config.groups)
    try:
        assert set(placements.groups) == {"clinic"}
        options = placements.actor_options(config.groups[0], 2)
        assert options["scheduling_strategy"].placement_group_bundle_index == 2
        assert options["num_cpus"] == 0.25
    finally:
        placements.release()
    assert placements.groups == {}


@pytest.mark.parametrize(
    "group_overrides, named",
    [
        ({"placement": {"node": "site_d"}}, "site_d"),
        ({"resources": {"num_cpus": 0.25, "resources": {"site_d": 1}}}, "site_d"),
        ({"count": 4, "placement": {"placement_group": "STRICT_SPREAD"}}, "STRICT_SPREAD"),
    ],
)
def test_unplaceable_group_fails_fast_naming_group_and_resource(three_sites, group_overrides, named):
    config = load_config(_config(group_overrides))
    started = time.perf_counter()
    with pytest.raises(RunError) as info:
        Orchestrator(config).run()
    message = str(info.value)
    assert "group clinic" in message
    assert named in message
    assert time.perf_counter() - started < 30  # a hang guard, not a speed claim


# -- one answer to "can this group ever be placed on these nodes" (no Ray needed) ------

NODES = [{"Alive": True, "Resources": {"CPU": 2.0, "site_a": 1.0}, "Labels": {"zone": "eu"}},
         {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0, "memory": 8e9, "site_b": 1.0}},
         {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]


@pytest.mark.parametrize(
    "group_overrides, problem",
    [
        ({"resources": {"num_cpus": 8}}, "group clinic: no node in the Ray cluster offers CPU=8 (largest node has 4)"),
        ({"resources": {"num_gpus": 2}}, "GPU=2 (largest node has 1)"),
        ({"placement": {"node": "site_d"}}, "no node in the Ray cluster offers custom resource 'site_d'"),
        ({"placement": {"node": "zone=us"}}, "no node has label zone=us"),
        ({"placement": {"node": "site_a"}, "resources": {"num_cpus": 3}}, "offers all at once of CPU=3"),
        ({"count": 3, "placement": {"placement_group": "STRICT_SPREAD"}}, "STRICT_SPREAD needs 3 nodes"),
    ],
)
def test_one_function_says_why_a_group_can_never_be_placed(group_overrides, problem):
    from orchestrator.cluster.fits import PlacementError, check_placement, placement_problem

    group = load_config(_config(group_overrides)).groups[0]
    assert problem in placement_problem(group, NODES)
    with pytest.raises(PlacementError, match="group clinic"):
        check_placement([group], NODES)


def test_a_group_that_fits_some_node_has_no_problem_and_preflight_counts_the_same_resources():
    from orchestrator.cluster.fits import placement_problem, process_resources
    from orchestrator.cluster.preflight import need

    group = load_config(_config({"placement": {"node": "site_b"}, "count": 2,
                                 "resources": {"num_cpus": 2, "num_gpus": 0.5, "memory": 2**30}})).groups[0]
    assert placement_problem(group, NODES) is None
    assert process_resources(group) == {"CPU": 2.0, "GPU": 0.5, "memory": 2.0**30}
    assert need(group, 2, footprint=0) == preflight_need(2, 4.0, 1.0, 2.0**31)


def preflight_need(processes: int, cpus: float, gpus: float, memory: float):
    from orchestrator.cluster.preflight import Need

    return Need(processes, cpus, gpus, memory)

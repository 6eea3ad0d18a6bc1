"""Pre-flight: ``hosting: auto`` becomes dedicated while the participants fit, a pool when
they do not, and explicit hosting that cannot fit is refused before Ray starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import digits_config

from orchestrator.cluster import preflight
from orchestrator.cluster.preflight import ACTOR_FOOTPRINT_BYTES, Capacity, HostingError, plan
from orchestrator.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
GB = 1e9
LAPTOP = Capacity(cpus=2, gpus=0, memory=16 * GB, cpus_fixed=False)
"""A local Ray this run would start on 2 cores: CPUs beyond them are oversubscribed."""
CLUSTER = Capacity(cpus=16, gpus=1, memory=16 * GB, where="the Ray cluster")


def config(*groups: dict, **top):
    base = digits_config(hosting="auto")["groups"][0]
    return load_config(digits_config(groups=[base | {"name": f"g{i}"} | g for i, g in enumerate(groups)], **top))


def hosting(resolved) -> dict[str, tuple[str, int | None]]:
    return {g.name: (g.hosting, g.workers) for g in resolved.config.groups}


def test_participants_that_fit_stay_dedicated():
    resolved = plan(config({"count": 2, "resources": {"num_cpus": 0.5}}), LAPTOP)
    assert hosting(resolved) == {"g0": ("dedicated", None)}
    assert resolved.line.startswith("hosting: group g0 -> dedicated [2 processes on this machine:")


def test_more_processes_than_cpus_become_a_pool_even_when_memory_fits():
    resolved = plan(config({"count": 8, "resources": {"num_cpus": 0.25}}), LAPTOP)  # the demo's shape
    assert hosting(resolved) == {"g0": ("pool", 2)}
    assert "would start 8 processes (each imports torch) on the 2 CPUs this machine has" in resolved.line
    assert hosting(plan(config({"count": 8, "resources": {"num_cpus": 0.25}}), CLUSTER)) == {"g0": ("dedicated", None)}


def test_too_many_for_memory_become_a_pool_of_one_worker_per_core():
    resolved = plan(config({"count": 100, "resources": {"num_cpus": 0.02}}), LAPTOP)
    assert hosting(resolved) == {"g0": ("pool", 2)}
    need = 100 * ACTOR_FOOTPRINT_BYTES / GB
    assert resolved.line.startswith(
        f"hosting: group g0 -> pool of 2 workers (100 dedicated actors would need ~{need:.0f} GB of "
        "memory, this machine has ~16 GB for Ray workers)")


def test_a_pool_gets_no_more_workers_than_memory_and_cpus_allow():
    tight = Capacity(cpus=64, gpus=0, memory=3 * ACTOR_FOOTPRINT_BYTES + 1)
    assert hosting(plan(config({"count": 100, "resources": {"num_cpus": 0.1}}), tight)) == {"g0": ("pool", 3)}
    assert hosting(plan(config({"count": 100, "resources": {"num_cpus": 4}}), CLUSTER)) == {"g0": ("pool", 4)}


def test_the_large_group_is_pooled_and_the_small_one_keeps_its_own_actors():
    ten = Capacity(cpus=16, gpus=0, memory=10 * ACTOR_FOOTPRINT_BYTES + 1, where="the Ray cluster")
    resolved = plan(config({"count": 3, "resources": {"num_cpus": 1}},
                           {"count": 60, "resources": {"num_cpus": 0.05}}), ten)
    assert hosting(resolved) == {"g0": ("dedicated", None), "g1": ("pool", 7)}  # the memory left
    assert resolved.line.startswith("hosting: group g0 -> dedicated; group g1 -> pool of 7 workers "
                                    "(63 dedicated actors would need ~")


def test_cpus_beyond_the_cores_pool_an_auto_group_but_only_slow_an_explicit_local_one():
    group = {"count": 8, "resources": {"num_cpus": 1}}
    assert hosting(plan(config(group), LAPTOP)) == {"g0": ("pool", 2)}
    explicit = plan(config(group | {"hosting": "dedicated"}), LAPTOP)
    assert hosting(explicit) == {"g0": ("dedicated", None)}
    assert "8 of 2 CPUs (oversubscribed)" in explicit.line
    fixed = Capacity(cpus=2, gpus=0, memory=16 * GB, where="the Ray cluster")
    with pytest.raises(HostingError, match="8 dedicated actors of group g0 would ask for 8 CPUs, "
                                           "the Ray cluster has 2"):
        plan(config(group | {"hosting": "dedicated"}), fixed)


def test_explicit_dedicated_that_cannot_fit_is_refused_with_group_numbers_and_fix():
    with pytest.raises(HostingError) as info:
        plan(config({"count": 100, "hosting": "dedicated", "resources": {"num_cpus": 0.02}}), LAPTOP)
    message = str(info.value)
    need = 100 * ACTOR_FOOTPRINT_BYTES / GB
    assert message.startswith(f"hosting: 100 dedicated actors of group g0 would need ~{need:.0f} GB of "
                              "memory, this machine has ~16 GB for Ray workers")
    assert "Set hosting: pool (or auto) for group g0" in message
    assert isinstance(info.value, ConfigError)  # the CLI prints it as is and exits 2


def test_gpus_beyond_those_present():
    group = {"count": 4, "resources": {"num_cpus": 1, "num_gpus": 0.5}}
    assert hosting(plan(config(group), CLUSTER)) == {"g0": ("pool", 2)}  # 2 x 0.5 of the 1 GPU
    with pytest.raises(HostingError, match="would ask for 2 GPUs, the Ray cluster has 1. Set hosting: pool"):
        plan(config(group | {"hosting": "dedicated"}), CLUSTER)
    with pytest.raises(HostingError, match=r"would ask for 0\.5 GPUs, this machine has 0\. Ask for less"):
        plan(config(group), LAPTOP)  # no GPU at all: no pool fits either


def test_secure_aggregation_pools_like_any_other_run():
    secure = {"privacy": {"secure_aggregation": True}}
    resolved = plan(config({"count": 100, "resources": {"num_cpus": 0.02}}, **secure), LAPTOP)
    assert hosting(resolved) == {"g0": ("pool", 2)}  # a pooled participant keeps its key on disk


def test_the_resolved_config_reloads_and_plans_to_itself():
    """config.yaml holds the resolved config; ``--resume`` loads and plans it again, and
    the run plans again what ``fedray run`` resolved."""
    resolved = plan(config({"count": 100, "resources": {"num_cpus": 0.02, "max_restarts": 2}}), LAPTOP)
    assert resolved.config.groups[0].resources.max_restarts == 0  # a pool's workers always restart
    again = load_config(resolved.config.model_dump(mode="json"))
    assert again == resolved.config
    assert plan(again, LAPTOP) == resolved  # the same line too: `fedray run` resolves, then the run checks


def test_this_machines_capacity():
    ray_constants = pytest.importorskip("ray._private.ray_constants")
    assert preflight.OBJECT_STORE_SHARE == ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION
    local = preflight.machine_capacity(config({}))
    assert local.cpus_fixed is False and local.where == "this machine"
    assert local.memory == pytest.approx(0.7 * preflight.total_memory())
    pinned = preflight.machine_capacity(config({}, ray={"num_cpus": 3, "num_gpus": 1}))
    assert (pinned.cpus, pinned.gpus, pinned.cpus_fixed) == (3, 1, True)


REFUSED_RUN = """
import json, sys, time
import ray
from orchestrator.config import load_config
from orchestrator.cluster.preflight import HostingError
from orchestrator.loop.run import Orchestrator

orch = Orchestrator(load_config(json.loads(sys.argv[1])))
started = time.perf_counter()
try:
    orch.run()
except HostingError as exc:
    print("REFUSED " + json.dumps({"seconds": time.perf_counter() - started, "message": str(exc),
                                   "ray_started": ray.is_initialized()}))
"""


def test_a_local_run_that_cannot_fit_is_refused_before_ray_starts():
    """In a subprocess: this test session may already have a Ray running."""
    raw = digits_config()
    raw["groups"][0] |= {"count": 5000, "hosting": "dedicated", "resources": {"num_cpus": 0.01}}
    done = subprocess.run([sys.executable, "-c", REFUSED_RUN, json.dumps(raw)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("REFUSED ")]
    assert lines, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("REFUSED "))
    assert result["ray_started"] is False
    assert result["seconds"] < 1.0
    assert "5000 dedicated actors of group site" in result["message"]
    assert "Set hosting: pool" in result["message"]


def test_a_run_on_a_running_ray_records_its_hosting(ray_session):
    from orchestrator.loop.run import Orchestrator

    orch = Orchestrator(load_config(digits_config(hosting="auto", stop={"max_aggregations": 1})))
    history = orch.run()
    rows = history[history.event == "hosting"]
    assert len(rows) == 1
    assert rows.detail.iloc[0].startswith("hosting: group site -> dedicated [4 processes on the Ray cluster:")
    assert orch.config.groups[0].hosting == orch.participants.config.groups[0].hosting == "dedicated"


def test_explicit_dedicated_placement_that_cannot_fit_names_why_it_must_stay():
    with pytest.raises(HostingError) as info:
        plan(config({"count": 100, "hosting": "dedicated", "resources": {"num_cpus": 0.02},
                     "placement": "pack"}), LAPTOP)
    assert str(info.value).endswith(
        "Group g0 must stay dedicated (its placement reserves one placement-group bundle per "
        "participant): run fewer participants, or join a larger Ray cluster (ray.address).")

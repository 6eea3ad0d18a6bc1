"""Under ``clock: simulated`` with a calibration and a capacity, a task lasts its calibrated
cost and waits, in simulated time, for its CPUs to be free on a node."""

from __future__ import annotations

import pytest
from conftest import digits_config

from orchestrator.cluster.calibration import Calibration, Measurement, Overheads
from orchestrator.cluster.simulated_costs import TaskCosts
from orchestrator.config import ConfigError, load_config
from orchestrator.loop.run import Orchestrator


def _calibration(path, fixed: float = 1.0, overheads: Overheads | None = None) -> str:
    rows = [Measurement("site", cpus, 0.0, False, 0.0, fixed / cpus * 2, 3e8, 0, 100) for cpus in (1.0, 2.0)]
    Calibration({"where": "test"}, rows, overheads).save(path)
    return str(path)


def _config(tmp_path, capacity: str | None, count: int = 2, num_cpus: float = 2,
            overheads: Overheads | None = None) -> dict:
    site = {**digits_config()["groups"][0], "count": count, "resources": {"num_cpus": num_cpus}}
    return digits_config(clock="simulated", calibration=_calibration(tmp_path / "cal.json", overheads=overheads),
                         capacity=capacity, groups=[site], stop={"max_aggregations": 1})


def test_two_tasks_needing_the_whole_node_run_one_after_the_other(ray_session, tmp_path):
    history = Orchestrator(load_config(_config(tmp_path, "1 x {CPU: 2}"))).run()
    arrivals = sorted(history[history.event == "update"].time)
    assert arrivals == pytest.approx([1.0, 2.0])  # 1 s each at 2 CPUs, one at a time


def test_calibrated_overheads_lengthen_tasks_and_stop_the_driver_between_rounds(ray_session, tmp_path):
    overheads = Overheads(task_seconds=0.5, aggregation_seconds=0.25, evaluation_seconds=0.125)
    history = Orchestrator(load_config(_config(tmp_path, "1 x {CPU: 2}", overheads=overheads))).run()
    t0 = history[history.event == "dispatch"].time.min()
    assert t0 == pytest.approx(0.125)  # the first evaluation, before anything is sent
    arrivals = sorted(history[history.event == "update"].time - t0)
    assert arrivals == pytest.approx([1.5, 3.0])  # 1 s of training + 0.5 s each, one at a time
    assert float(history[history.event == "aggregation"].time.iloc[0] - t0) == pytest.approx(3.25)
    assert float(history[history.event == "evaluation"].time.iloc[-1] - t0) == pytest.approx(3.375)


def test_a_node_with_room_for_both_runs_them_together_and_costs_follow_the_allocation(tmp_path):
    config = load_config(_config(tmp_path, "1 x {CPU: 4}"))
    costs = TaskCosts.for_config(config)
    spec = type("Spec", (), {"speed": 1.0, "system": config.groups[0].system, "name": "site-0"})()
    assert [costs.seconds(spec, "site", 100, 0, now=0.0) for _ in range(3)] == [1.0, 1.0, 2.0]
    one_cpu = TaskCosts.for_config(load_config(_config(tmp_path, "1 x {CPU: 1}", num_cpus=1)))
    assert one_cpu.seconds(spec, "site", 100, 0, now=5.0) == pytest.approx(2.0)  # measured 2 s at 1 CPU


def test_an_allocation_the_capacity_cannot_hold_is_refused_with_the_constraint(tmp_path):
    with pytest.raises(ConfigError, match="needs CPU=2 but the largest node has CPU=1"):
        TaskCosts.for_config(load_config(_config(tmp_path, "2 nodes x {CPU: 1}")))
    with pytest.raises(ConfigError, match="set clock: simulated"):
        load_config({**_config(tmp_path, None), "clock": "wall"})
    with pytest.raises(ConfigError, match="capacity"):
        load_config(_config(tmp_path, "four nodes"))


def test_tasks_below_one_cpu_still_keep_a_core_busy_each(tmp_path):
    """Ray would run eight 0.25-CPU tasks on 2 cores at once, each thread at a quarter of
    its calibrated speed; booked as a whole core each they take as long, two at a time."""
    config = load_config(_config(tmp_path, "1 x {CPU: 2}", count=3, num_cpus=0.25))
    costs = TaskCosts.for_config(config)
    spec = type("Spec", (), {"speed": 1.0, "system": config.groups[0].system, "name": "site-0"})()
    assert [costs.seconds(spec, "site", 100, 0, now=0.0) for _ in range(3)] == [2.0, 2.0, 4.0]  # 2 s at 1 CPU
    assert costs.reserved["CPU"] == pytest.approx(3 * 0.25 * 2.0)  # what Ray reserves: the logical share

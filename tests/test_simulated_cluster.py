"""Tasks hold resources on nodes in simulated time; allocations that never fit are pruned."""

from __future__ import annotations

import math

import pytest

from orchestrator.cluster.capacity import Capacity
from orchestrator.cluster.simulated_cluster import DoesNotFit, GroupDemand, SimulatedCluster, prune


def _starts(capacity: str, demands: list[dict[str, float]], duration: float = 5.0) -> list[tuple[int, float]]:
    cluster = SimulatedCluster(Capacity.parse(capacity))
    return [(r.node, r.start) for r in (cluster.reserve(d, duration) for d in demands)]


def test_two_tasks_needing_2_cpus_on_a_2_cpu_node_run_one_after_the_other() -> None:
    assert _starts("1 x {CPU: 2}", [{"CPU": 2}] * 2) == [(0, 0.0), (0, 5.0)]


def test_on_a_4_cpu_node_the_same_two_tasks_overlap() -> None:
    assert _starts("1 x {CPU: 4}", [{"CPU": 2}] * 2) == [(0, 0.0), (0, 0.0)]


def test_four_quarter_gpu_tasks_share_one_gpu_and_a_fifth_waits() -> None:
    demand = {"CPU": 1, "GPU": 0.25}
    assert _starts("1 x {CPU: 8, GPU: 1}", [demand] * 5) == [(0, 0.0)] * 4 + [(0, 5.0)]


def test_first_fit_by_node_order_then_the_earliest_start_anywhere() -> None:
    starts = _starts("1 x {CPU: 2} + 2 x {CPU: 4}", [{"CPU": 3}, {"CPU": 2}, {"CPU": 2}, {"CPU": 3},
                                                     {"CPU": 4}])
    # 3 CPUs skip the 2-CPU node; 2 CPUs fill node 0 first, then the next free one (node 2);
    # at 5.0 nodes 1 and 2 free up together: the tie goes to node 1, the 4-CPU task to node 2
    assert starts == [(1, 0.0), (0, 0.0), (2, 0.0), (1, 5.0), (2, 5.0)]


def test_a_task_starts_no_earlier_than_it_is_ready_and_fills_a_gap_before_later_bookings() -> None:
    cluster = SimulatedCluster(Capacity.parse("1 x {CPU: 2}"))
    assert cluster.reserve({"CPU": 2}, 4.0, earliest=10.0).start == 10.0
    short = cluster.reserve({"CPU": 1}, 3.0, earliest=2.0)
    long = cluster.reserve({"CPU": 1}, 9.0, earliest=2.0)
    assert (short.start, short.end) == (2.0, 5.0)
    assert (long.start, long.end) == (14.0, 23.0)  # 9 s does not fit before 10.0


def test_whole_run_holds_take_their_share_forever() -> None:
    cluster = SimulatedCluster(Capacity.parse("1 x {CPU: 4}"))
    held = cluster.hold({"CPU": 3}, "hospital[0]")
    assert (held.start, held.end) == (0.0, math.inf)
    assert cluster.reserve({"CPU": 1}, 2.0).start == 0.0
    assert cluster.reserve({"CPU": 1}, 2.0).start == 2.0
    with pytest.raises(DoesNotFit, match="held for the whole run"):
        cluster.reserve({"CPU": 2}, 1.0)


def test_the_same_calls_give_the_same_schedule() -> None:
    def schedule() -> list[tuple[int, float, float]]:
        cluster = SimulatedCluster(Capacity.parse("2 x {CPU: 4, GPU: 1}"))
        out = []
        for i in range(60):
            demand = {"CPU": 1 + i % 3, "GPU": 0.25 * (i % 2)}
            r = cluster.reserve(demand, duration=1.0 + (i * 7 % 5), earliest=float(i // 4))
            out.append((r.node, r.start, r.end))
        return out

    first = schedule()
    assert first == schedule()
    assert len({start for _, start, _ in first}) > 10  # contention really shaped it


def test_never_more_than_a_node_holds_at_any_instant() -> None:
    cluster = SimulatedCluster(Capacity.parse("2 x {CPU: 4, GPU: 1}"))
    booked = [cluster.reserve({"CPU": 1 + i % 3, "GPU": 0.25 * (i % 2)}, 1.0 + i * 7 % 5, float(i // 4))
              for i in range(60)]
    for r in booked:
        live = [o for o in booked if o.node == r.node and o.start <= r.start < o.end]
        assert sum(o.demand["CPU"] for o in live) <= 4
        assert sum(o.demand.get("GPU", 0.0) for o in live) <= 1 + 1e-9




def test_forgetting_finished_bookings_keeps_the_schedule() -> None:
    kept, forgetful = (SimulatedCluster(Capacity.parse("1 x {CPU: 2}")) for _ in range(2))
    for i in range(40):
        now = float(i)
        forgetful.forget_before(now)
        a = kept.reserve({"CPU": 1 + i % 2}, 1.5, now)
        b = forgetful.reserve({"CPU": 1 + i % 2}, 1.5, now)
        assert (a.start, a.end) == (b.start, b.end)
    assert len(forgetful.reservations()) < len(kept.reservations())
    with pytest.raises(ValueError, match="earliest >= 39"):
        forgetful.reserve({"CPU": 1}, 1.0, earliest=1.0)


def test_a_demand_larger_than_every_node_names_the_binding_resource() -> None:
    cluster = SimulatedCluster(Capacity.parse("3 x {CPU: 2}"))
    with pytest.raises(DoesNotFit, match="needs CPU=4 but the largest node has CPU=2"):
        cluster.reserve({"CPU": 4}, 1.0)
    with pytest.raises(DoesNotFit, match="needs GPU=0.5 but the largest node has GPU=0"):
        cluster.reserve({"CPU": 1, "GPU": 0.5}, 1.0)
    split = SimulatedCluster(Capacity.parse("1 x {CPU: 16} + 1 x {CPU: 2, GPU: 1}"))
    with pytest.raises(DoesNotFit, match=r"no node has it all: node 0 \{CPU: 16\}; node 1"):
        split.reserve({"CPU": 4, "GPU": 1}, 1.0)


def test_prune_names_a_per_task_demand_no_node_meets() -> None:
    groups = [GroupDemand("clinic", {"CPU": 0.5}, 5), GroupDemand("hospital", {"CPU": 4})]
    assert prune(groups, Capacity.this_machine(2)) == (
        "group hospital: needs CPU=4 but the largest node has CPU=2")


def test_prune_names_the_total_dedicated_actors_hold() -> None:
    groups = [GroupDemand("hospital", {"CPU": 2}, 3), GroupDemand("clinic", {"CPU": 0.5}, 5)]
    assert prune(groups, Capacity.this_machine(2)) == (
        "whole-run processes hold CPU=8.5 (hospital 3 x 2 + clinic 5 x 0.5) but the capacity "
        "has CPU=2 in all")
    assert prune(groups, Capacity.parse("4 nodes x {CPU: 16}")) is None


def test_prune_catches_holders_that_fit_in_total_but_not_node_by_node() -> None:
    groups = [GroupDemand("hospital", {"CPU": 3}, 2)]
    reason = prune(groups, Capacity.parse("2 x {CPU: 2} + 1 x {CPU: 3}"))  # 7 CPUs >= 6
    assert reason is not None and reason.startswith("group hospital: process 2 of 2 needs {CPU: 3}")


def test_prune_catches_tasks_left_no_room_by_the_holders() -> None:
    groups = [GroupDemand("hospital", {"CPU": 1}, 2), GroupDemand("clinic", {"CPU": 1})]
    assert prune(groups, Capacity.this_machine(2)) == (
        "group clinic: a task needs {CPU: 1}, and the whole-run processes leave no node that much")
    assert prune(groups, Capacity.this_machine(3)) is None

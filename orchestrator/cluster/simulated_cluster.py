"""Tasks holding resources on nodes, in simulated time: where contention comes from.

Under ``clock: simulated`` with a calibration, a task's duration follows its allocation;
this module makes the allocation cost something too. A task needs its CPUs and GPU share
free on one node of the described :class:`~orchestrator.cluster.capacity.Capacity` while it runs,
so two 2-CPU tasks on a 2-CPU node run one after the other, four 0.25-GPU tasks share a
GPU and a fifth waits. Concurrency, queueing and stragglers then emerge from the
allocation, in simulated seconds that do not depend on the load of the real machine.

The model is a booking table (conservative backfilling): each :meth:`reserve` takes
the earliest time at or after ``earliest`` when some node has the demand free for the
whole duration, given every reservation made before it; the earliest start wins, ties go
to the first node in the capacity's order. Resources come back at a reservation's end.
Whole-run holders (dedicated actors, pool workers) :meth:`hold` their resources forever.
Everything is plain arithmetic on the inputs, so the same calls give the same schedule.

>>> from orchestrator.cluster.capacity import Capacity
>>> cluster = SimulatedCluster(Capacity.parse("1 x {CPU: 2}"))
>>> [cluster.reserve({"CPU": 2}, duration=3.0).start for _ in range(2)]
[0.0, 3.0]
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.cluster.capacity import Capacity, Node, format_amount, format_resources

EPS = 1e-9
"""Slack on sums of fractions: four 0.25-GPU tasks fill one GPU exactly."""


class DoesNotFit(ValueError):
    """A demand no node can ever meet; the message names the resource that binds."""


@dataclass(frozen=True)
class Reservation:
    """``demand`` held on node ``node`` from ``start`` to ``end`` (``inf`` for a whole-run hold)."""

    node: int
    start: float
    end: float
    demand: Mapping[str, float]
    label: str = ""


@dataclass(frozen=True)
class GroupDemand:
    """What a group asks of the capacity, for :func:`prune`.

    ``demand`` is per task or per process (a bundle, as :func:`orchestrator.placement.bundle`);
    ``holders`` is how many processes hold it for the whole run (a dedicated group's
    participants, a pool's workers), 0 when only running tasks hold it."""

    group: str
    demand: Mapping[str, float]
    holders: int = 0


class SimulatedCluster:
    """The bookings of one simulated run on ``capacity``.

    Each node keeps its usage as a step function (segment start times and the resources
    in use from each until the next), so a booking scans the node's segments once."""

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._floor = 0.0
        self._times: list[list[float]] = [[0.0] for _ in capacity.nodes]
        self._usage: list[list[dict[str, float]]] = [[{}] for _ in capacity.nodes]
        self._booked: list[Reservation] = []

    def reserve(self, demand: Mapping[str, float], duration: float, earliest: float = 0.0,
                label: str = "") -> Reservation:
        """Book ``demand`` for ``duration`` at the earliest time >= ``earliest`` it is free.

        Raises :class:`DoesNotFit` when no node is large enough, or when whole-run holds
        leave no node room for it ever."""
        if duration < 0 or earliest < self._floor - EPS:
            raise ValueError(f"duration must be >= 0 and earliest >= {self._floor:g} "
                             f"(forgotten before then); got {duration:g}, {earliest:g}")
        need = {k: float(v) for k, v in demand.items() if v}
        check_fits(need, self.capacity)
        best: tuple[float, int] | None = None
        for index, node in enumerate(self.capacity.nodes):
            if not _within(need, node):
                continue
            start = self._earliest_on(index, need, duration, max(earliest, self._floor))
            if start is not None and (best is None or start < best[0]):
                best = (start, index)
        if best is None:
            raise DoesNotFit(f"needs {format_resources(need)} but every node that could host it "
                             "is held for the whole run by other processes")
        start, index = best
        booked = Reservation(index, start, start + duration, need, label)
        self._book(booked)
        return booked

    def hold(self, demand: Mapping[str, float], label: str = "") -> Reservation:
        """Book ``demand`` for the whole run (a dedicated actor, a pool worker)."""
        return self.reserve(demand, math.inf, self._floor, label)

    def reservations(self) -> list[Reservation]:
        """Every booking still remembered, by start, node, booking order."""
        return sorted(self._booked, key=lambda r: (r.start, r.node))

    def forget_before(self, now: float) -> None:
        """Drop what is over by ``now`` so bookings stay quick over a long run; later
        :meth:`reserve` calls must then ask for ``earliest >= now`` (a clock's now only grows)."""
        self._floor = max(self._floor, now)
        for index, times in enumerate(self._times):
            first = bisect.bisect_right(times, self._floor) - 1
            self._times[index] = [self._floor, *times[first + 1:]]
            self._usage[index] = self._usage[index][first:]
        self._booked = [r for r in self._booked if r.end > self._floor]

    def _earliest_on(self, index: int, need: Mapping[str, float], duration: float,
                     earliest: float) -> float | None:
        """First start >= ``earliest`` with ``need`` free throughout [start, start + duration)
        on node ``index``: one pass over its segments, moving the start past each segment
        that is too full (usage only falls where a segment begins)."""
        node, times, usage = self.capacity.nodes[index], self._times[index], self._usage[index]
        start = earliest
        i = bisect.bisect_right(times, start) - 1
        while i < len(times):
            if times[i] > start and times[i] >= start + duration:
                return start
            used = usage[i]
            if any(used.get(k, 0.0) + v > node.get(k, 0.0) + EPS for k, v in need.items()):
                if i + 1 == len(times):
                    return None  # the last segment lasts forever
                start = times[i + 1]
            i += 1
        return start

    def _book(self, booked: Reservation) -> None:
        times, usage = self._times[booked.node], self._usage[booked.node]
        first = _split(times, usage, booked.start)
        last = _split(times, usage, booked.end) if math.isfinite(booked.end) else len(times)
        for segment in usage[first:last]:
            for key, value in booked.demand.items():
                segment[key] = segment.get(key, 0.0) + value
        self._booked.append(booked)


def _split(times: list[float], usage: list[dict[str, float]], at: float) -> int:
    """The index of the segment starting at ``at``, splitting the one that spans it."""
    i = bisect.bisect_left(times, at)
    if i == len(times) or times[i] != at:
        times.insert(i, at)
        usage.insert(i, dict(usage[i - 1]))
    return i


def check_fits(demand: Mapping[str, float], capacity: Capacity) -> None:
    """Raise :class:`DoesNotFit` unless some node of an empty ``capacity`` can host ``demand``."""
    need = {k: v for k, v in demand.items() if v}
    if any(_within(need, node) for node in capacity.nodes):
        return
    for key in sorted(need):
        largest = capacity.largest(key)
        if need[key] > largest + EPS:
            raise DoesNotFit(f"needs {key}={format_amount(key, need[key])} but the largest node "
                             f"has {key}={format_amount(key, largest)}")
    nodes = "; ".join(f"node {i} {format_resources(n)}" for i, n in enumerate(capacity.nodes))
    raise DoesNotFit(f"needs {format_resources(need)} on one node, but no node has it all: {nodes}")


def prune(groups: Sequence[GroupDemand], capacity: Capacity) -> str | None:
    """Why an allocation can never run on ``capacity`` (the binding constraint), or None.

    Checked in order: a group's per-task or per-process demand larger than any node; the
    whole-run holders' sum over the capacity's total, per resource; the holders not
    packing onto the nodes (largest first, first fit); a task-only group left no room."""
    for g in groups:
        try:
            check_fits(g.demand, capacity)
        except DoesNotFit as exc:
            return f"group {g.group}: {exc}"
    total = capacity.total()
    for key in sorted({k for g in groups for k in g.demand}):
        held = sum(g.holders * g.demand.get(key, 0.0) for g in groups)
        if held > total.get(key, 0.0) + EPS:
            parts = " + ".join(f"{g.group} {g.holders} x {format_amount(key, g.demand[key])}"
                               for g in groups if g.holders and g.demand.get(key))
            return (f"whole-run processes hold {key}={format_amount(key, held)} ({parts}) but the "
                    f"capacity has {key}={format_amount(key, total.get(key, 0.0))} in all")
    cluster = SimulatedCluster(capacity)
    holders = sorted((g for g in groups if g.holders), key=lambda g: _size(g.demand, total), reverse=True)
    for g in holders:
        for i in range(g.holders):
            try:
                cluster.hold(g.demand, f"{g.group}[{i}]")
            except DoesNotFit:
                return (f"group {g.group}: process {i + 1} of {g.holders} needs "
                        f"{format_resources(g.demand)}, and no node has that left once the other "
                        f"whole-run processes are placed on {capacity.describe()}")
    for g in groups:
        if not g.holders and not _room_left(cluster, g.demand):
            return (f"group {g.group}: a task needs {format_resources(g.demand)}, and the "
                    "whole-run processes leave no node that much")
    return None


def _within(need: Mapping[str, float], node: Node) -> bool:
    return all(value <= node.get(key, 0.0) + EPS for key, value in need.items())


def _size(demand: Mapping[str, float], total: Mapping[str, float]) -> tuple[float, ...]:
    """Largest share of the capacity the demand takes, for first-fit-decreasing packing."""
    shares = sorted((v / total[k] for k, v in demand.items() if total.get(k)), reverse=True)
    return tuple(shares)


def _room_left(cluster: SimulatedCluster, demand: Mapping[str, float]) -> bool:
    try:
        cluster.reserve(demand, 0.0)
    except DoesNotFit:
        return False
    return True

"""What a task costs in simulated time when the run has a calibration or a capacity.

Under ``clock: simulated`` with ``calibration:``, a task's compute lasts its group's
measured cost at the group's allocation (``fixed + per sample x samples`` at its
``num_cpus``/``num_gpus``, :mod:`orchestrator.cluster.calibration`), divided by the
participant's ``speed``, plus the calibration's per-task overhead (Ray's round trip, the
driver's checks); without one, ``system.simulated_seconds_per_sample`` as before. The
driver's own seconds per aggregation and per evaluation (:meth:`TaskCosts.driver_seconds`)
move the simulated clock on between rounds.
With a capacity (``capacity:``, else this machine when there is a calibration) the
compute holds the group's CPUs and GPU share on a node of a :class:`SimulatedCluster`,
so it starts only when they are free: two 2-CPU tasks on a 2-CPU node run one after the
other. Transfer time (``system.bandwidth_mbps``) is added after, holding nothing. Tasks
are booked in dispatch order, which the simulated clock makes the same on every run, so
the schedule is deterministic for a seed.
"""

from __future__ import annotations

import os

from actors.participant.system import transfer_seconds
from actors.spec.participant import ParticipantSpec
from orchestrator.cluster.calibration import Calibration
from orchestrator.cluster.capacity import Capacity
from orchestrator.cluster.simulated_cluster import GroupDemand, SimulatedCluster, prune
from orchestrator.config import ConfigError, Group, RunConfig


def task_demand(group: Group) -> dict[str, float]:
    """What one running task of ``group`` holds: its CPUs and GPU share.

    A CPU task holds at least the cores its torch threads keep busy (``max(1,
    int(num_cpus))``, as the participant sets them): Ray runs four 0.25-CPU tasks on one
    core side by side, each at a quarter of the speed it was calibrated at alone, which
    takes as long as running them one after another at full speed. Booking the logical
    share instead had every task finish early (predictions 37-57% short of the wall clock
    on the heterogeneous example)."""
    res = group.resources
    cpus = res.num_cpus if res.num_gpus else max(res.num_cpus, 1.0)
    return {k: float(v) for k, v in (("CPU", cpus), ("GPU", res.num_gpus)) if v}


def this_machine(config: RunConfig) -> Capacity:
    """This machine as a local Ray for ``config`` counts it: ``ray.num_cpus`` or the cores,
    and ``ray.num_gpus`` or, when a group asks for a GPU, the GPUs there are."""
    from orchestrator.cluster.preflight import local_gpus

    gpus = config.ray.num_gpus
    if gpus is None:
        gpus = local_gpus() if any(g.resources.num_gpus for g in config.groups) else 0.0
    return Capacity.this_machine(config.ray.num_cpus or float(os.cpu_count() or 1), gpus)


class TaskCosts:
    """Prices and books the run's tasks in simulated time (module docstring)."""

    def __init__(self, config: RunConfig, calibration: Calibration | None, capacity: Capacity | None) -> None:
        self.groups = {g.name: g for g in config.groups}
        self.calibration = calibration
        self.cluster = SimulatedCluster(capacity) if capacity is not None else None
        self.reserved = {"CPU": 0.0, "GPU": 0.0}
        """CPU- and GPU-seconds the tasks priced so far reserve at their allocation (what a
        cluster bills): the cost of a run, beside its time."""
        if calibration is not None:
            missing = [g for g in self.groups if g not in calibration.groups()]
            if missing:
                raise ConfigError(f"calibration: no measurement of group {', '.join(missing)} "
                                  f"(measured: {', '.join(calibration.groups())}); re-run fedray profile --calibration")
        if capacity is not None:
            reason = prune([GroupDemand(g.name, task_demand(g)) for g in config.groups], capacity)
            if reason:
                raise ConfigError(f"capacity {capacity.describe()}: {reason}")

    @classmethod
    def for_config(cls, config: RunConfig) -> TaskCosts | None:
        """The run's costs, or None when it has neither a calibration nor a capacity."""
        if config.calibration is None and config.capacity is None:
            return None
        calibration = Calibration.load(config.calibration) if config.calibration else None
        capacity = Capacity.from_spec(config.capacity) if config.capacity is not None else this_machine(config)
        return cls(config, calibration, capacity)

    def seconds(self, spec: ParticipantSpec, group: str, samples: int, nbytes: int, now: float) -> float:
        """How long a task dispatched at ``now`` lasts, waiting for its resources included."""
        res = self.groups[group].resources
        if self.calibration is not None:
            compute = (self.calibration.task_seconds(group, res.num_cpus, res.num_gpus, samples) / spec.speed
                       + self.calibration.overheads.task_seconds)
        else:
            compute = samples * (spec.system.simulated_seconds_per_sample or 0.0) / spec.speed
        end = now + compute
        self.reserved["CPU"] += res.num_cpus * compute
        self.reserved["GPU"] += res.num_gpus * compute
        if self.cluster is not None:
            self.cluster.forget_before(now)
            end = self.cluster.reserve(task_demand(self.groups[group]), compute, earliest=now, label=spec.name).end
        return end - now + transfer_seconds(spec.system, nbytes)


    def driver_seconds(self, step: str) -> float:
        """The driver's seconds for one ``aggregation`` or ``evaluation``, as calibrated (0
        without a calibration): it dispatches nothing meanwhile."""
        if self.calibration is None:
            return 0.0
        overheads = self.calibration.overheads
        return {"aggregation": overheads.aggregation_seconds, "evaluation": overheads.evaluation_seconds}[step]

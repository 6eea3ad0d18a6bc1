"""A wall-clock ``fedray tune`` trial as it will run: hosting, placement group, or why it cannot run.

A trial's pre-flight and its placement group must agree: the hosting a trial's run decides
(``hosting: auto`` -> dedicated or a pool) is decided here first, against the capacity a
``fedray run`` of the same config would see, and the trial's placement group then holds
exactly those processes. Inside the trial, pre-flight plans against what the group holds
(:func:`orchestrator.cluster.preflight.ray_capacity`) and finds the same answer. An
allocation that can never fit the Ray the trials run on is pruned with the constraint
that binds (:func:`orchestrator.cluster.simulated_cluster.prune`), not left pending.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace

from orchestrator.cluster import preflight
from orchestrator.cluster.capacity import Capacity
from orchestrator.config import ConfigError, RunConfig, TuneSearch


@dataclass(frozen=True)
class TrialPlan:
    """One trial as it will run, or why it cannot run at all."""

    config: RunConfig
    """Hosting resolved."""
    bundles: list[dict[str, float]]
    """``[driver, participants]``: Tune gives the first bundle to the trial's own process;
    every participant process goes in the second, one bundle shared by all so that a
    small pool worker can never take the room a large dedicated actor needs."""
    pruned: str | None = None


def plan_trial(config: RunConfig, driver_cpus: float, hosting: preflight.Capacity, cluster: Capacity) -> TrialPlan:
    """Resolve the trial config's hosting as ``fedray run`` would on ``hosting`` (this
    machine, or the Ray cluster joined), then check its processes fit ``cluster`` (the Ray
    the trials run on)."""
    from orchestrator.cluster.placement import bundle
    from orchestrator.cluster.simulated_cluster import DoesNotFit, GroupDemand, check_fits, prune

    driver = {"CPU": driver_cpus}
    try:
        config = preflight.plan(config, hosting).config
    except preflight.HostingError as exc:
        return TrialPlan(config, [driver], str(exc).removeprefix("hosting: "))
    participants: dict[str, float] = {}
    for group in config.groups:
        for key, value in bundle(group).items():
            participants[key] = participants.get(key, 0.0) + value * preflight.processes(group)
    demands = [GroupDemand("driver", driver, 1)]
    demands += [GroupDemand(g.name, bundle(g), preflight.processes(g)) for g in config.groups if bundle(g)]
    reason = prune(demands, cluster)
    if reason is None:
        try:
            check_fits(participants, cluster)
        except DoesNotFit as exc:
            reason = f"the trial's participants share one placement-group bundle, which {exc}"
    return TrialPlan(config, [driver, participants or {"CPU": 0.01}], reason)


def hosting_capacity(config: RunConfig, search: TuneSearch) -> preflight.Capacity:
    """Where a trial's hosting is decided: the Ray cluster joined, else this machine as a
    local ``fedray run`` would see it (``num_cpus`` of the search fixes its CPUs)."""
    import ray

    machine = preflight.machine_capacity(config)
    if ray.is_initialized():
        return preflight.ray_capacity()
    if not machine.gpus and any(path.endswith("num_gpus") for path in search.space):
        machine = replace(machine, gpus=preflight.local_gpus())
    if search.num_cpus is not None:
        machine = replace(machine, cpus=search.num_cpus, cpus_fixed=True)
    return machine


def grid_points(search: TuneSearch) -> list[dict[str, object]]:
    """Every grid/choice combination, ranges at both ends: what the trials may ask for."""
    import itertools

    axes = [[(path, v) for v in values] for path, spec in search.space.items() for values in spec.values()]
    return [dict(point) for point in itertools.product(*axes)]


def local_cpus(trials: Iterable[RunConfig], search: TuneSearch, hosting: preflight.Capacity) -> float:
    """Logical CPUs of the local Ray a search starts: the machine's cores (4 at least), or
    more when a trial's processes ask for more, as ``fedray run`` would give that run."""
    if search.num_cpus is not None:
        return search.num_cpus
    wanted = [0.0]
    for trial in trials:
        with contextlib.suppress(ConfigError):  # refused hosting: pruned later, with the reason
            resolved = preflight.plan(trial, hosting).config
            wanted.append(search.driver_cpus + sum(g.resources.num_cpus * preflight.processes(g)
                                                   for g in resolved.groups))
    return float(max(os.cpu_count() or 1, 4, math.ceil(max(wanted))))

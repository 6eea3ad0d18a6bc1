"""Each participant's spec, from the run config: what its actor loads, builds and trains."""

from __future__ import annotations

import numpy as np

from actors.participant.system import draw_speeds
from actors.spec.data import PartitionData
from actors.spec.participant import ParticipantSpec
from orchestrator.cluster.members import RunError
from orchestrator.cluster.traces import TraceError, participant_systems
from orchestrator.config import Group, RunConfig, participant_name


def participant_specs(config: RunConfig, run_id: str) -> list[tuple[ParticipantSpec, Group]]:
    """Each participant's spec and its group, in a fixed order (the partition order).
    A group's device trace gives each participant its own speed and system (bandwidth,
    availability windows), read here on the driver; a bad trace is a :class:`RunError`."""
    num_partitions = sum(g.count for g in config.groups if isinstance(g.data, PartitionData))
    out, partition_index, index = [], 0, 0
    for group in config.groups:
        speed = group.system.speed
        speeds = draw_speeds(speed, group.count) if not isinstance(speed, float) else np.full(group.count, speed)
        systems = [group.system] * group.count
        if group.system.trace is not None:
            try:
                traced = participant_systems(group.system, group.name,
                                             [participant_name(group, i) for i in range(group.count)])
            except TraceError as exc:
                raise RunError(str(exc)) from None
            speeds, systems = np.array([s for s, _ in traced]), [system for _, system in traced]
        for i in range(group.count):
            is_partition = isinstance(group.data, PartitionData)
            name = participant_name(group, i)
            spec = ParticipantSpec(
                name=name, group=group.name, index_in_group=i,
                seed=config.seed * 100_003 + index, model=group.model, data=group.data,
                train=group.train, dataset=config.dataset, task=config.task, preprocess=config.preprocess,
                partition_index=partition_index if is_partition else None,
                num_partitions=num_partitions, num_threads=max(1, int(group.resources.num_cpus)),
                num_gpus=group.resources.num_gpus, gpu_memory_gb=group.resources.gpu_memory_gb,
                speed=float(speeds[i]), system=systems[i],
                strategy=config.strategy.name, strategy_options=config.strategy.options,
                state_dir=private_state_dir(config, run_id, name, group),
            )
            out.append((spec, group))
            partition_index += is_partition
            index += 1
    return out


def private_state_dir(config: RunConfig, run_id: str, name: str, group: Group) -> str | None:
    """Where a participant keeps its private state, on its own node (relative paths
    resolve against that node's temp dir), or None when checkpoints are off. Under
    local DP-SGD always, so a restarted actor keeps counting its privacy budget, and for
    pooled participants always, so any worker that serves one next goes on from it."""
    policy = config.checkpoint
    if policy.every is None and group.train.dp_sgd is None and group.hosting != "pool":  # auto: not yet pooled
        return None
    template = policy.participant_dir or "fedray-state/{run_id}/{name}"
    return template.format(run_id=run_id, name=name)

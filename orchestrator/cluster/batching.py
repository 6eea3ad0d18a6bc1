"""Which pool workers train the tasks they have at once together (a group's ``batched``).

``batched: true`` batches on every worker of the group and ``false`` on none. Under
``auto`` (the default) each worker of the group that expects two or more of its tasks at
once measures, at start, copies of as many of its own participants trained both ways
(:mod:`actors.participant.batching_probe`), and batches only where together was faster.
The hardware, the model and the batch size decide, not the device type: a GPU worker
measures too. A worker whose group asks for more than one torch thread (and does not
batch by setting) also measures one at a time on one thread. Each verdict is a
``batching`` event in the history and a notice.
"""

from __future__ import annotations

import logging
import math

import ray

from actors.participant.batching_probe import MAX_COPIES
from orchestrator.cluster.describe import START_TIMEOUT_S
from orchestrator.cluster.members import Member, by_worker, error_message
from orchestrator.config import RunConfig
from orchestrator.records.history import History

log = logging.getLogger("fedray")


def tasks_at_once(config: RunConfig, served: int, total: int) -> int:
    """How many of a worker's ``served`` participants (of ``total`` in the run) train at
    the same time: their share of a round (``clients_per_round``) or of the tasks kept in
    flight (``concurrency``), all of them by default.

    >>> from orchestrator.config import load_config
    >>> config = load_config({"name": "x", "dataset": {"name": "digits"}, "groups": [{"name": "site", "count": 100}],
    ...                       "schedule": {"mode": "sync", "clients_per_round": 10}})
    >>> tasks_at_once(config, 50, 100), tasks_at_once(config, 1, 100)
    (5, 1)
    """
    schedule = config.schedule
    at_once = getattr(schedule, "clients_per_round", None) or getattr(schedule, "concurrency", None) or total
    return min(served, math.ceil(at_once * served / max(total, 1)))


def tasks_over_run(config: RunConfig, served: int, total: int) -> int | None:
    """How many tasks a worker's ``served`` participants (of ``total``) take over the run,
    at most, from ``stop``'s counts (None when only time bounds it).

    >>> from orchestrator.config import load_config
    >>> config = load_config({"name": "x", "dataset": {"name": "digits"}, "groups": [{"name": "site", "count": 100}],
    ...                       "schedule": {"mode": "sync", "clients_per_round": 10}, "stop": {"max_aggregations": 30}})
    >>> tasks_over_run(config, 50, 100)
    150
    """
    stop, schedule = config.stop, config.schedule
    per_aggregation = {"sync": getattr(schedule, "clients_per_round", None) or total,
                       "buffered": getattr(schedule, "buffer_size", 1), "async": 1}[schedule.mode]
    bounds = [n for n in (stop.max_updates, stop.max_aggregations and stop.max_aggregations * per_aggregation)
              if n is not None]
    return math.ceil(min(bounds) * served / max(total, 1)) if bounds else None


def choose(members: list[Member], config: RunConfig, history: History) -> None:
    """Set ``batches`` on every pooled member that started: its worker trains its tasks
    together. Probes the ``auto`` groups' workers, all at once."""
    groups = {g.name: g for g in config.groups}
    started = [m for m in members if not m.lost]
    probes: dict[ray.ObjectRef, list[Member]] = {}
    for served in by_worker(started):
        batched = groups[served[0].group].batched
        copies = min(tasks_at_once(config, len(served), len(started)), MAX_COPIES)
        if (batched == "auto" and copies >= 2) or (batched is False and served[0].spec.num_threads > 1):
            tasks = tasks_over_run(config, len(served), len(started))
            whos = [m.address() for m in served[:max(copies, 1)]]
            probes[served[0].handle.probe_batching.remote(whos, tasks, batched == "auto")] = served
        for member in served:
            member.batches = batched is True
    if not probes:
        return
    ready, late = ray.wait(list(probes), num_returns=len(probes), timeout=START_TIMEOUT_S)
    for ref in [*ready, *late]:
        served = probes[ref]
        try:
            probe = ray.get(ref, timeout=0)
            verdict, batches = probe.line(), probe.batches
        except ray.exceptions.GetTimeoutError:
            verdict, batches = f"one at a time: no measurement within {START_TIMEOUT_S:.0f}s", False
        except ray.exceptions.RayError as exc:
            verdict, batches = f"one at a time: the measurement failed: {error_message(exc)}", False
        for member in served:
            member.batches = batches
        line = f"group {served[0].group}, the worker serving {served[0].name} and {len(served) - 1} more: {verdict}"
        history.record("batching", participant=served[0].name, group=served[0].group, detail=line)
        log.info("batched: %s: %s", str(groups[served[0].group].batched).lower(), line)

"""``fedray profile CONFIG --allocations ... --calibration OUT.json``: measure each group's
cost at each candidate allocation, once, for the simulated clock to price tasks with.

One Ray session, one participant actor per group (the group's first participant, its
real model and data). For each candidate ``num_cpus`` the actor's torch threads are set
as a run would set them (``max(1, int(num_cpus))``) and it trains tasks of two sizes: one
local step, and the group's own local work. The two sizes separate the fixed cost of a
task (set-up, optimizer, evaluation of the update) from the cost per sample. Groups are
measured one after another so they do not slow each other; candidates that give the same
thread count share one measurement.

Then a short real run (:func:`measure_overheads`) prices what the rows cannot see: the
config, every group on one-CPU pool workers as a simulated search runs it, for
:data:`PROBE_AGGREGATIONS` sync rounds on the wall clock. Its rounds give the driver's
seconds per aggregation and per evaluation directly, and the per-task overhead as what the
simulated cluster must add to each task to take as long as the round did. The result is :class:`Calibration`
(JSON, documented in ``orchestrator/cluster/calibration.py``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray

from actors.participant.participant import Participant
from orchestrator.cluster.calibration import Calibration, Measurement, Overheads
from orchestrator.cluster.capacity import Capacity
from orchestrator.cluster.simulated_cluster import SimulatedCluster
from orchestrator.config import ConfigError, RunConfig, TuneSearch, load_config
from strategies.types import GlobalState, Instructions

REPEATS = 2
"""Tasks per size and thread count; the fastest counts (the others met a busy core)."""

PROBE_AGGREGATIONS = 6
"""Rounds of the overhead probe; the first (warm-up) and the last (no next dispatch) are
not counted, so four are."""


def parse_allocations(texts: list[str], config: RunConfig) -> dict[str, list[float]]:
    """``["0.5,1,2"]`` (every group) or ``["hospital=1,2", "clinic=0.25,1"]``; a group not
    named keeps its own ``num_cpus``, always measured too."""
    names = [g.name for g in config.groups]
    out = {g.name: {g.resources.num_cpus} for g in config.groups}
    for text in texts:
        group, _, values = text.rpartition("=")
        if group and group not in names:
            raise ConfigError(f"--allocations {text}: no group named {group!r}; groups: {names}")
        try:
            cpus = {float(v) for v in values.split(",") if v.strip()}
        except ValueError:
            raise ConfigError(f"--allocations {text}: expected numbers of CPUs like 0.5,1,2") from None
        if not cpus or min(cpus) <= 0:
            raise ConfigError(f"--allocations {text}: give CPU counts > 0")
        for name in [group] if group else names:
            out[name] |= cpus
    return {name: sorted(cpus) for name, cpus in out.items()}


def allocations_searched(config: RunConfig, search: TuneSearch) -> dict[str, list[float]]:
    """The ``num_cpus`` a search tries for each group (grid and choice values, a range's
    ends: the calibration interpolates between), each group's own always included."""
    out = {g.name: {g.resources.num_cpus} for g in config.groups}
    for path, spec in search.space.items():
        parts = path.split(".")
        if len(parts) == 4 and parts[0] == "groups" and parts[2:] == ["resources", "num_cpus"] and parts[1] in out:
            for kind, values in spec.items():
                out[parts[1]] |= {float(v) for v in (values if kind in ("grid", "choice") else values[:2])}
    return {name: sorted(cpus) for name, cpus in out.items()}


def _threads(num_cpus: float) -> int:
    return max(1, int(num_cpus))


def _set_threads(actor: Any, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _peaks(actor: Any) -> tuple[int, int]:
    """The process's peak resident memory and peak GPU memory allocated, in bytes."""
    import resource

    import torch

    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, int(gpu)


def _timed(handle: Any, state: Any, steps: int, seed: int) -> tuple[float, int]:
    update = ray.get(handle.train.remote(state, Instructions(task_id=seed, seed=seed, local_steps=steps)))
    return update.train_seconds, int(update.metrics["samples"])


def fit_cost(small: tuple[float, int], large: tuple[float, int]) -> tuple[float, float]:
    """Fixed seconds and seconds per sample through two (seconds, samples) points; when a
    busy core made the small task no faster than the large one, all of the large task's
    time counts per sample (the larger estimate of a task's cost)."""
    (t1, s1), (t2, s2) = small, large
    if s2 <= s1 or t2 <= t1:
        return 0.0, t2 / max(s2, 1)
    per_sample = (t2 - t1) / (s2 - s1)
    return max(0.0, t1 - per_sample * s1), per_sample


def calibrate(config: RunConfig, allocations: dict[str, list[float]]) -> Calibration:
    """Measure every group at every candidate ``num_cpus`` (module docstring)."""
    from orchestrator.cluster.connect import ray_for

    with ray_for(config):
        rows = _measure_groups(config, allocations)
        overheads = measure_overheads(config, Calibration({}, rows))
    machine = {"hostname": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "config": config.name}
    return Calibration(machine, rows, overheads)


def _measure_groups(config: RunConfig, allocations: dict[str, list[float]]) -> list[Measurement]:
    """A row per group and candidate ``num_cpus``, on one actor per group (module docstring)."""
    from orchestrator.cluster.specs import participant_specs
    from orchestrator.loop.adaptive import base_steps

    firsts = {}
    for spec, group in participant_specs(config, "calibrate"):
        firsts.setdefault(group.name, (spec, group))
    handles = {name: ray.remote(Participant).options(num_cpus=0, num_gpus=group.resources.num_gpus).remote(spec)
               for name, (spec, group) in firsts.items()}
    rows = []
    try:
        infos = dict(zip(handles, ray.get([h.describe.remote() for h in handles.values()]), strict=True))
        for name, handle in handles.items():
            group, info = firsts[name][1], infos[name]
            params = ray.get(handle.initial_parameters.remote())
            state = ray.put(GlobalState(0, np.asarray(params, np.float32), info["layout"]))
            train = group.train
            steps = max(2, base_steps(info["num_examples"], train.batch_size, train.local_epochs, train.local_steps))
            _timed(handle, state, 1, 0)  # warm-up: first-call costs are not the allocation's
            by_threads: dict[int, Measurement] = {}
            for cpus in allocations[name]:
                threads = _threads(cpus)
                if threads not in by_threads:
                    ray.get(handle.__ray_call__.remote(_set_threads, threads))
                    small = min(_timed(handle, state, 1, r) for r in range(REPEATS))
                    large = min(_timed(handle, state, steps, r) for r in range(REPEATS))
                    fixed, per_sample = fit_cost(small, large)
                    peak, gpu = ray.get(handle.__ray_call__.remote(_peaks))
                    by_threads[threads] = Measurement(name, cpus, group.resources.num_gpus, False, per_sample,
                                                      fixed, float(peak), float(gpu), small[1] * REPEATS + large[1] * REPEATS)
                rows.append(replace(by_threads[threads], num_cpus=cpus))
    finally:
        for handle in handles.values():
            ray.kill(handle, no_restart=True)
    return rows


def probe_config(config: RunConfig) -> RunConfig:
    """``config`` as the overhead probe runs it: as a simulated search's trials run (every
    group pooled on one-CPU workers, as many as pre-flight gives a run), in sync rounds of
    the config's size, on the wall clock, with no simulated system (nobody sleeps),
    evaluated every round. (One worker a group would start fewer processes, but on a
    2-core machine it measured a third of the overhead that real runs' four workers met.)"""
    from orchestrator.tools.simulated_search import computing_only, on_the_wall_clock

    schedule = config.schedule
    per_round = getattr(schedule, "clients_per_round", None) or getattr(schedule, "concurrency", None)
    raw = on_the_wall_clock(computing_only(config)).model_dump(mode="json")
    raw |= {"schedule": {"mode": "sync", "clients_per_round": per_round},
            "stop": {"max_aggregations": PROBE_AGGREGATIONS}}
    raw["evaluation"]["every"] = 1
    for group in raw["groups"]:
        group.pop("system", None)
    return load_config(raw)


def measure_overheads(config: RunConfig, calibration: Calibration) -> Overheads:
    """Run :func:`probe_config` on the Ray this process is connected to and read its
    rounds (module docstring), on this machine as the simulated clock plans it."""
    from orchestrator.cluster.simulated_costs import task_demand, this_machine
    from orchestrator.loop.run import Orchestrator

    probe = Orchestrator(probe_config(config))
    history = probe.run()
    groups = {g.name: g for g in probe.config.groups}

    def trained(update: pd.Series) -> float:  # what the rows price: its training, alone
        gpus = groups[update.group].resources.num_gpus
        return calibration.task_seconds(update.group, 1.0, gpus, float(update.samples))

    return overheads_of(history, trained, lambda update: task_demand(groups[update.group]), this_machine(config))


def overheads_of(history: pd.DataFrame, trained: Any, demand: Any, capacity: Capacity) -> Overheads:
    """The overheads in a wall-clock history of sync rounds: per round (the first and last
    skipped), the driver's seconds from the round's last update to the next dispatch, split
    at the evaluation; and per task, the overhead with which the simulated cluster, booking
    the round's tasks in dispatch order for ``trained(update)`` seconds each plus it, ends
    the round as long after its dispatch as the history did (:func:`fit_overhead`)."""
    events = {kind: history[history.event == kind] for kind in ("dispatch", "update", "aggregation", "evaluation")}
    dispatched = events["dispatch"].groupby("base_version").time.min()
    per_task, aggregation, evaluation = [], [], []
    for version in dispatched.index[1:-1]:
        updates = events["update"][events["update"].base_version == version].set_index("participant")
        after = version + 1
        agg = events["aggregation"][events["aggregation"].version == after].time
        ev = events["evaluation"][events["evaluation"].version == after].time
        if updates.empty or agg.empty or ev.empty or after not in dispatched.index:
            continue
        start, last = float(dispatched[version]), float(updates.time.max())
        order = events["dispatch"][events["dispatch"].base_version == version].participant
        tasks = [updates.loc[name] for name in order if name in updates.index]
        per_task.append(fit_overhead([trained(u) for u in tasks], [demand(u) for u in tasks], last - start, capacity))
        evaluation.append(float(ev.iloc[0] - agg.iloc[0]))
        aggregation.append(float(agg.iloc[0]) - last + float(dispatched[after] - ev.iloc[0]))
    if not per_task:
        raise RuntimeError("the overhead probe finished no complete round; see its history")
    return Overheads(statistics.median(per_task), max(0.0, statistics.median(aggregation)),
                     max(0.0, statistics.median(evaluation)), len(per_task))


def fit_overhead(seconds: list[float], demands: list[dict[str, float]], measured: float,
                 capacity: Capacity) -> float:
    """The per-task seconds which, added to each of ``seconds``, make a
    :class:`SimulatedCluster` on ``capacity`` (tasks booked in order) take ``measured``
    seconds in all; 0 when it takes that long without any. Fitting through the simulator,
    rather than dividing the cores' time by the tasks, keeps its imperfect packing of
    unequal tasks out of the overhead (that made predictions about 10% long)."""

    def makespan(extra: float) -> float:
        cluster = SimulatedCluster(capacity)
        return max(cluster.reserve(d, t + extra).end for t, d in zip(seconds, demands, strict=True))

    if makespan(0.0) >= measured:
        return 0.0
    low, high = 0.0, measured
    for _ in range(40):  # the makespan grows with the overhead
        middle = (low + high) / 2
        low, high = (middle, high) if makespan(middle) < measured else (low, middle)
    return (low + high) / 2


def write_calibration(config: RunConfig, allocations: dict[str, list[float]], path: str) -> int:
    """Measure each group at its ``allocations`` (num_cpus), print the table, write ``path``."""
    started = time.perf_counter()
    calibration = calibrate(config, allocations)
    calibration.save(path)
    table = pd.DataFrame([r.__dict__ for r in calibration.rows])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    o = calibration.overheads
    print(f"overheads: {o.task_seconds * 1e3:.1f} ms a task beyond training, {o.aggregation_seconds * 1e3:.1f} ms "
          f"an aggregation, {o.evaluation_seconds * 1e3:.1f} ms an evaluation ({o.rounds_measured} rounds)")
    print(f"\nwrote {path} ({len(table)} rows, {time.perf_counter() - started:.0f}s); use it with "
          "clock: simulated and calibration: " + path)
    return 0


@contextlib.contextmanager
def calibrated_first(config: RunConfig, search: TuneSearch, path: str | None) -> Iterator[None]:
    """When ``--calibration`` names no file yet: measure it first (``fedray profile
    --calibration``, at the CPUs the search tries), on a Ray session the search then runs
    on, so its overhead probe's pool workers serve the first trial warm; the session ends
    with the search (a confirmation's wall-clock runs start their own, as ``fedray run``)."""
    if path is None or Path(path).exists():
        yield
        return
    if not Path(path).resolve().parent.is_dir():  # before measuring, not after
        raise ConfigError(f"--calibration {path}: there is no directory {Path(path).resolve().parent} "
                          "to write it in")
    from orchestrator.cluster.connect import ray_for
    from orchestrator.tools.simulated_search import computing_only

    with ray_for(computing_only(config)):
        print(f"fedray: {path} does not exist yet: calibrating first")
        write_calibration(config, allocations_searched(config, search), path)
        yield

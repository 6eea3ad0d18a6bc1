"""Simulated searches, run trial after trial in this process on one Ray session.

Under ``clock: simulated`` a trial's seconds to the target are priced by the calibration
at the trial's allocation on the planned capacity (:mod:`orchestrator.cluster.simulated_costs`);
they do not depend on where, when or beside what the trial's real computation runs. So
there is nothing for a Tune trial's own process and placement group to isolate, and much
to lose: each would start a process that imports torch, and its own pool workers. Here
every trial runs in this driver, its participants on pool workers of one shape (the
allocation is priced, not held), which stay warm from trial to trial
(:mod:`orchestrator.cluster.warm_workers`): after the first, a trial starts no process.

Sampling is Tune's (``generate_variants``: grid, choice and the random domains, seeded by
the run's seed). A trial whose simulated clock passes the ``keep``-th best time to the
target found so far is stopped there (unless the search says ``early_stop: false``): it
can no longer be among the ``keep`` best, and its row says where it stopped. Each row also gives the CPU- and GPU-seconds its tasks reserved
at their allocation; trials that tie on time rank the cheaper first.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.cluster.simulated_costs import TaskCosts
from orchestrator.config import ConfigError, RunConfig, TuneSearch, load_config
from orchestrator.tools.trials import run_trial


def variants(search: TuneSearch, seed: int) -> list[dict[str, Any]]:
    """Every trial's values: the grid's combinations, each ``num_samples`` times with the
    random domains drawn afresh, as Ray Tune would sample them."""
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    from orchestrator.tools.tune import search_space

    rng = np.random.RandomState(seed)
    return [values for _ in range(search.num_samples)
            for _, values in generate_variants(search_space(search), random_state=rng)]


def computing_only(config: RunConfig) -> RunConfig:
    """``config`` as its real processes run it in a simulated trial: every group pooled on
    one-CPU workers with its GPU share and nothing else reserved, so that trials of any
    allocation reuse the same warm workers. The allocation itself is priced, not held."""
    raw = config.model_dump(mode="json")
    for group in raw["groups"]:
        group |= {"hosting": "pool", "workers": None, "placement": "default"}
        group["resources"] |= {"num_cpus": 1.0, "memory": None, "resources": {}}
    return load_config(raw)


def on_the_wall_clock(config: RunConfig) -> RunConfig:
    """``config`` as ``fedray run`` would run it for real: the wall clock, no pricing."""
    raw = config.model_dump(mode="json") | {"clock": "wall", "calibration": None, "capacity": None}
    return load_config(raw)


NOT_PRICED = ("hosting", "workers", "placement", "resources.memory", "resources.resources")
"""Group settings :func:`computing_only` replaces: the simulated clock prices tasks, not the
processes that run them, so trials differing only in these would score the same."""


def check_priced(search: TuneSearch) -> None:
    """Refuse, before any trial, a simulated search over settings no simulated trial prices."""
    for path in search.space:
        parts = path.split(".")
        if parts[0] == "groups" and ".".join(parts[2:]) in NOT_PRICED:
            raise ConfigError(
                f"search path {path}: simulated trials price tasks, not the processes that run them "
                f"(every trial runs on one-CPU pool workers), so {', '.join(NOT_PRICED)} would score the "
                "same in every trial; search them on the wall clock (without --calibration)")


def run_simulated_search(config: RunConfig, search: TuneSearch, out: Path, keep: int = 1) -> pd.DataFrame:
    """Every trial of ``search`` on ``config`` (``clock: simulated``), one after another on
    the Ray this process is connected to; one row per trial, unsorted. An allocation the
    capacity cannot hold is pruned before it runs, with the constraint that binds."""
    from orchestrator.tools.tune import trial_config

    rows: list[dict[str, Any]] = []
    reached: list[float] = []  # each finished trial's time or cost to the target, as the objective asks
    by_cost = search.objective == "cost_to_target"
    for number, values in enumerate(variants(search, config.seed)):
        trial_id = f"trial_{number:03d}"
        trial = trial_config(config, search, values)
        try:
            costs = TaskCosts.for_config(trial)
        except ConfigError as exc:  # ranked after every trial that ran
            rows.append({"trial_id": trial_id, **values, "reached": False, "pruned": str(exc), "stopped_early": None,
                         "objective": math.inf if search.to_target else -math.inf})
            continue
        stops = search.early_stop and search.to_target and len(reached) >= keep
        bound = sorted(reached)[keep - 1] if stops else None
        price = (lambda c=costs: spent(c, search)) if by_cost and costs is not None else None
        over = (lambda p=price, b=bound: p() > b) if price is not None and bound is not None else None
        result = run_trial(computing_only(trial), search, out / "runs" / trial_id, costs=costs,
                           stop_after=None if by_cost else bound, over_cost=over)
        if price is not None:  # what it paid to reach the target; never reached: after all that did
            result["objective"] = price() if result["reached"] else math.inf
        if result["reached"]:
            reached.append(result["objective"] if by_cost else result["time_to_target"])
        reserved = costs.reserved if costs is not None else {}  # (None: priced by system.* alone)
        rows.append({"trial_id": trial_id, **values, "pruned": None, "stopped_early": None, **result,
                     "cpu_seconds": reserved.get("CPU"), "gpu_seconds": reserved.get("GPU")})
    table = pd.DataFrame(rows)
    if table.get("cpu_seconds") is not None and table.cpu_seconds.notna().any():
        table["pareto"] = pareto_front(table)
    return table


def spent(costs: TaskCosts, search: TuneSearch) -> float:
    """A trial's cost so far (``cost_to_target``): the CPU-seconds its tasks reserved plus
    ``gpu_price`` times their GPU-seconds."""
    return costs.reserved["CPU"] + search.gpu_price * costs.reserved["GPU"]


def pareto_front(table: pd.DataFrame) -> pd.Series:
    """Whether each trial is on the front of seconds to the target against reserved
    CPU-seconds: it reached the target and no other trial that did was as fast and as
    cheap, and strictly better in one. A trial stopped early never reached it, so a slow but
    cheap allocation may be missing from the front unless the search has ``early_stop: false``.

    >>> t = pd.DataFrame({"reached": [True, True, True, False], "time_to_target": [1.0, 2.0, 2.0, None],
    ...                   "cpu_seconds": [3.0, 1.0, 2.0, 0.5]})
    >>> pareto_front(t).tolist()
    [True, True, False, False]
    >>> pareto_front(t.assign(reached=False)).tolist()  # none reached: no front (it used to raise)
    [False, False, False, False]
    """
    reached = table[table.reached.fillna(False).astype(bool)]
    time, cost = reached.time_to_target.to_numpy(float), reached.cpu_seconds.to_numpy(float)
    dominated = [bool(((time <= t) & (cost <= c) & ((time < t) | (cost < c))).any()) for t, c in zip(time, cost)]
    front = pd.Series(False, index=table.index)
    front.loc[reached.index] = pd.Series([not d for d in dominated], index=reached.index, dtype=bool)
    return front


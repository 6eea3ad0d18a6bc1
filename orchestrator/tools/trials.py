"""One trial of a search, run and scored: seconds to the target from the first dispatch.

Shared by ``fedray tune`` (each trial, under Ray Tune or simulated in the driver) and
``--confirm`` (the same configs again on the wall clock), so a prediction and its
measurement are scored the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from orchestrator.config import RunConfig, TuneSearch
from orchestrator.records.history import headline

if TYPE_CHECKING:
    from orchestrator.cluster.simulated_costs import TaskCosts


class BudgetSpent(Exception):
    """Raised from the history listener to end a trial whose training budget is spent."""


class TrialClock:
    """Listens to a trial's history; ends it ``budget_s`` after its first dispatch, or
    once ``over_cost()`` says it has spent more than it may.

    Plugged in where a progress display would go, so the run loop itself is unchanged.
    """

    def __init__(self, budget_s: float, over_cost: Callable[[], bool] | None = None) -> None:
        self.budget_s = budget_s
        self.over_cost = over_cost
        self.rows: list[dict[str, Any]] = []
        self.t0: float | None = None
        self.spent = False

    def on_event(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))
        if self.t0 is None and row["event"] == "dispatch":
            self.t0 = row["time"]
        if self.t0 is not None and row["time"] - self.t0 > self.budget_s or (
                self.over_cost is not None and self.over_cost()):
            self.spent = True
            raise BudgetSpent

    def close(self) -> None:
        pass


def score(history: pd.DataFrame, search: TuneSearch) -> dict[str, Any]:
    """Time to target and accuracy within budget, on the clock of the first dispatch.

    Participant start-up (importing torch, loading data) is left out: it does not depend
    on the allocation and, on a busy machine, would swamp the differences being measured.
    """
    dispatched = history[history.event == "dispatch"]
    t0 = float(dispatched.time.min()) if len(dispatched) else float(history.time.max())
    evals = history[history.event == "evaluation"].assign(t=lambda f: f.time - t0)
    in_budget = evals[evals.t <= search.budget_s]
    metric, higher = headline(history)
    target = search.target if search.target is not None else (search.target_accuracy or 2.0)
    values = in_budget[metric].dropna() if metric in in_budget else pd.Series(dtype=float)
    if higher:
        best = float(values.max()) if len(values) else 0.0
        hit = in_budget[in_budget[metric] >= target] if len(values) else in_budget.iloc[:0]
    else:  # an error metric (mse, mae, loss): lower is better
        best = float(values.min()) if len(values) else float("inf")
        hit = in_budget[in_budget[metric] <= target] if len(values) else in_budget.iloc[:0]
    time_to_target = float(hit.t.iloc[0]) if len(hit) else None
    if not search.to_target:  # the metric at budget, maximised
        objective = best if higher else -best
    elif time_to_target is not None:
        objective = time_to_target
    else:  # never reached the target: after every trial that did, the better metric first
        objective = search.budget_s * ((2.0 - best) if higher else (2.0 - 1.0 / (1.0 + best)))
    return {"objective": objective, "reached": time_to_target is not None, "metric": metric,
            "time_to_target": time_to_target, f"best_{metric}": best, "startup_seconds": t0}


def run_trial(config: RunConfig, search: TuneSearch, run_dir: Path, costs: TaskCosts | None = None,
              stop_after: float | None = None, over_cost: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Run ``config`` (on the Ray this process is connected to) until its target, its stop
    rule or ``search.budget_s`` after its first dispatch; its score, with the events
    written to ``run_dir/trial_events.csv``.

    ``costs`` prices its tasks at another allocation than its processes hold (a simulated
    search's trials); ``stop_after`` ends it sooner, once it can no longer beat a time to
    the target that another trial reached (its row then says ``stopped_early``), and
    ``over_cost`` once it has spent more than another trial paid for the target."""
    from orchestrator.loop.run import Orchestrator

    budget = search.budget_s if stop_after is None else min(search.budget_s, stop_after)
    clock = TrialClock(budget, over_cost)
    with contextlib.suppress(BudgetSpent):
        Orchestrator(config, out_dir=run_dir, progress=clock, costs=costs).run()
    history = pd.DataFrame(clock.rows)
    run_dir.mkdir(parents=True, exist_ok=True)
    history.to_csv(run_dir / "trial_events.csv", index=False)
    result = {**score(history, search), "num_aggregations": int((history.event == "aggregation").sum()),
              "wall_seconds": float(history.wall_time.max()), "run_dir": str(run_dir)}
    if budget < search.budget_s and not result["reached"] and clock.spent:
        result["stopped_early"] = f"at {budget:.3g}s, where another trial had already reached the target"
    elif over_cost is not None and not result["reached"] and clock.spent:
        result["stopped_early"] = "once it cost more than another trial paid to reach the target"
    return result

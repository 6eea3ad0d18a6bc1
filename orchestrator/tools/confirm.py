"""``fedray tune ... --calibration FILE --confirm K``: check simulated predictions on the wall clock.

A simulated search ranks allocations by calibrated seconds to the target. Before acting on
the ranking a user wants to know how far it holds on the real machine, so this re-runs the
``K`` best trials that ran, and the config as given (the baseline), on this machine's wall
clock, one at a time, each as ``fedray run`` would run it and scored exactly as a trial is
(seconds from its first dispatch, :mod:`orchestrator.tools.trials`). The baseline's
prediction comes from one more simulated run of it. ``confirm.csv`` holds predicted and
measured seconds side by side with the error of each prediction.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.config import RunConfig, TuneSearch
from orchestrator.tools.simulated_search import on_the_wall_clock
from orchestrator.tools.trials import run_trial
from orchestrator.tools.tune import get_path, plain, trial_config

BASELINE = "as given"


def best_trials(table: pd.DataFrame, search: TuneSearch, k: int) -> list[tuple[str, dict[str, Any]]]:
    """The ``k`` best trials that ran (``table`` is sorted best first), each as its id and values."""
    ran = table[table.pruned.isna()] if "pruned" in table else table
    return [(str(row.trial_id), {p: plain(row[p]) for p in search.space}) for _, row in ran.head(k).iterrows()]


def confirm(simulated: RunConfig, search: TuneSearch, table: pd.DataFrame, k: int, out: Path) -> pd.DataFrame:
    """Predicted against measured seconds to the target for the baseline and the ``k`` best
    trials of ``table``; written to ``out/confirm.csv`` and returned."""
    wall = on_the_wall_clock(simulated)
    predicted = dict(zip(table.trial_id.astype(str), table.time_to_target, strict=True))
    given = {p: get_path(wall.model_dump(mode="json"), p) for p in search.space}
    rows = []
    # each run as `fedray run` would run it: on the Ray this process is connected to, else
    # on a local Ray of its own, sized by its pre-flight (startup is not scored)
    for trial_id, values in [(BASELINE, {}), *best_trials(table, search, k)]:
        name = "as-given" if trial_id == BASELINE else trial_id
        if trial_id == BASELINE:
            guess = run_trial(trial_config(simulated, search, {}), search, out / "confirm" / f"{name}-simulated")
            predicted[BASELINE] = guess["time_to_target"]
        measured = run_trial(trial_config(wall, search, values), search, out / "confirm" / name)
        rows.append({"trial_id": trial_id, **(values or given), "predicted_s": _seconds(predicted[trial_id]),
                     "measured_s": _seconds(measured["time_to_target"]),
                     "oversubscribed": oversubscribed(out / "confirm" / name)})
    frame = pd.DataFrame(rows)
    frame["error"] = frame.predicted_s / frame.measured_s - 1.0  # NaN where one never reached the target
    frame.to_csv(out / "confirm.csv", index=False)
    return frame


def oversubscribed(run_dir: Path) -> bool:
    """Whether the wall-clock run's hosting asked for more CPUs than the machine has (its
    pre-flight line says so): its processes then share cores in a way the simulated
    cluster, which books cores as a cluster's Ray does, does not price."""
    path = run_dir / "history.csv"
    if not path.exists():  # ended by the budget: no history written
        return False
    history = pd.read_csv(path, usecols=["event", "detail"])
    return bool(history[history.event == "hosting"].detail.fillna("").str.contains("(oversubscribed)",
                                                                                  regex=False).any())


def confirm_lines(frame: pd.DataFrame, search: TuneSearch) -> list[str]:
    """The table, then how the best measured trial compares with the baseline."""
    shown = frame.to_string(index=False, float_format=lambda v: "-" if math.isnan(v) else f"{v:.3f}")
    lines = [f"\nconfirmed on the wall clock (seconds to the target from the first dispatch; "
             f"error = predicted / measured - 1; '-' = not reached within {search.budget_s:g}s):", shown]
    base = frame.iloc[0].measured_s
    trials = frame.iloc[1:].dropna(subset=["measured_s"])
    if len(trials) and not math.isnan(base):
        best = trials.loc[trials.measured_s.idxmin()]
        lines.append(f"best measured: trial {best.trial_id}, {best.measured_s:.2f}s against {base:.2f}s as given "
                     f"({1 - best.measured_s / base:.0%} sooner)")
    errors = frame.error.dropna().abs()
    over = frame[frame.oversubscribed] if "oversubscribed" in frame else frame.iloc[:0]
    if len(errors):
        line = f"prediction error: at most {errors.max():.0%} over {len(errors)} runs"
        fair = frame[~frame.trial_id.isin(over.trial_id)].error.dropna().abs()
        if len(over) and len(fair):
            line += f"; at most {fair.max():.0%} over the {len(fair)} that did not oversubscribe"
        lines.append(line)
    if len(over):
        lines.append(f"{', '.join(over.trial_id)}: the run asked for more CPUs than this machine has; its "
                     "processes shared cores, which the simulated cluster does not price (expect it longer)")
    return lines


def _seconds(value: Any) -> float:
    return math.nan if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

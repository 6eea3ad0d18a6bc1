"""PNG plots of a run: accuracy, a participant timeline, staleness, tuning trials.

Figures are built with ``matplotlib.figure.Figure`` and saved by the Agg renderer, never
through ``pyplot``: no window, no global backend switch, so it works headless (CI, a
cluster head node) and does not disturb a notebook that imports fedray.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from orchestrator.records.history import headline
from orchestrator.records.progress import FAILURE_EVENTS
from orchestrator.records.report import RunResult, objective_column, trial_labels

OUTCOMES = {  # timeline bar colour per task outcome, in legend order
    "accepted": "#2ca02c",
    "accepted, stale": "#ff9f1c",
    "dropped: late": "#8c564b",
    "rejected": "#9467bd",
    "failed": "#d62728",
    "unavailable": "#7f7f7f",
    "interrupted": "#e377c2",  # in flight when a run was killed; ended at its ``resumed``
    "still running": "#c7c7c7",
}
DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def training_start(history: pd.DataFrame) -> float:
    """When the first task went out: time before that is Ray and actor start-up, which
    differs between runs and machines, so the time axes start here."""
    dispatches = history.time[history.event == "dispatch"]
    return float(dispatches.min()) if len(dispatches) else 0.0


def _evaluations(history: pd.DataFrame) -> pd.DataFrame:
    evals = history[history.event == "evaluation"].sort_values("time").copy()
    evals["time"] = (evals.time - training_start(history)).clip(lower=0.0)
    return evals


UNIT_INTERVAL = frozenset({"accuracy", "macro_f1", "auroc"})
"""Metrics that live in [0, 1], plotted on that axis so runs compare at a glance."""


def plot_accuracy(runs: Sequence[tuple[str, pd.DataFrame]], path: Path, x: str = "time",
                  clock: str = "wall") -> Path:
    """The global model's headline metric on held-out data (accuracy, R², ...) against the
    run's seconds (``x="time"``, on the ``clock`` the history's ``time`` column holds) or
    aggregations (``x="version"``); several runs overlay with a legend."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    metric, _ = headline(runs[0][1])
    for label, history in runs:
        evals = _evaluations(history)
        ax.plot(evals[x], evals[metric], marker="o", markersize=3, linewidth=1.6, label=label)
    ax.set_xlabel(f"{clock} seconds since the first task was sent" if x == "time" else "aggregations (global version)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{metric} vs " + (f"{clock} time" if x == "time" else "aggregations"))
    ax.grid(alpha=0.3)
    if metric in UNIT_INTERVAL:
        ax.set_ylim(0, 1.02)
    if len(runs) > 1 or runs[0][0]:
        ax.legend(loc="best")
    return _save(fig, path)


def task_outcomes(history: pd.DataFrame) -> pd.DataFrame:
    """One row per dispatched task: participant, start, end, outcome, staleness.

    Pairs each ``dispatch`` with the event that ended the task (same ``task_id``). A task
    with no ending event that was dispatched before a ``resumed`` event was in flight when
    the run was killed (the resumed run never hears of it again): it is ``interrupted`` and
    ends at that resume. Any other task with no ending event was still running when the
    run stopped.
    """
    with_task = history[history.task_id.notna()]
    starts = with_task[with_task.event == "dispatch"][["task_id", "participant", "time"]]
    ends = with_task[with_task.event != "dispatch"][["task_id", "event", "time", "staleness"]]
    ends = ends.drop_duplicates("task_id", keep="first")
    tasks = starts.merge(ends, on="task_id", how="left", suffixes=("_start", "_end"))
    run_end = float(history.time.max())
    resumes = np.sort(history.time[history.event == "resumed"].to_numpy(dtype=float))
    # the first resume after each dispatch, if any; only open tasks end there
    after = np.searchsorted(resumes, tasks.time_start.to_numpy(dtype=float), side="right")
    resumed_at = pd.Series(np.append(resumes, np.nan)[after], index=tasks.index)
    interrupted = tasks.event.isna() & resumed_at.notna()
    tasks.loc[interrupted, "event"] = "interrupted"
    tasks.loc[interrupted, "time_end"] = resumed_at[interrupted]

    def outcome(row: pd.Series) -> str:
        event = row.event
        if pd.isna(event):
            return "still running"
        if event == "update":
            return "accepted, stale" if (row.staleness or 0) > 0 else "accepted"
        if event == "late":
            return "dropped: late"
        if event in FAILURE_EVENTS:
            return "failed"
        return str(event)

    return pd.DataFrame({
        "participant": tasks.participant.astype(str),
        "start": tasks.time_start.astype(float),
        "end": tasks.time_end.fillna(run_end).astype(float),
        "outcome": tasks.apply(outcome, axis=1) if len(tasks) else pd.Series(dtype=str),
        "staleness": tasks.staleness,
    })


def plot_timeline(history: pd.DataFrame, path: Path) -> Path:
    """One row per participant, a bar per task from dispatch to arrival, coloured by
    outcome; aggregations are thin vertical lines. Stragglers show as long bars."""
    tasks = task_outcomes(history)
    names = sorted(tasks.participant.unique())
    row_of = {name: i for i, name in enumerate(names)}
    fig = Figure(figsize=(9, 1.2 + 0.42 * max(len(names), 1)))
    ax = fig.add_subplot()
    first = training_start(history)
    tasks[["start", "end"]] -= first
    span = max(float(history.time.max()) - first, 1e-3)
    for t in history[history.event == "aggregation"].time - first:
        ax.axvline(t, color="#bbbbbb", linewidth=0.6, zorder=0)
    for outcome, colour in OUTCOMES.items():
        own = tasks[tasks.outcome == outcome]
        for _, task in own.iterrows():
            y = row_of[task.participant]
            width = max(task.end - task.start, span * 0.002)
            ax.barh(y, width, left=task.start, height=0.62, color=colour,
                    edgecolor="white", linewidth=1.2, zorder=2)
            if outcome == "accepted, stale" and width > span * 0.03:
                ax.text(task.start + width / 2, y, f"s={int(task.staleness)}", ha="center",
                        va="center", fontsize=7, zorder=3)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(-span * 0.01, span * 1.01)
    ax.set_xlabel("seconds since the first task was sent; grey lines = aggregations; s=staleness")
    ax.set_title("participant timeline: one bar per task, dispatch to arrival")
    present = [o for o in OUTCOMES if (tasks.outcome == o).any()]
    ax.legend(handles=[Patch(color=OUTCOMES[o], label=o) for o in present],
              loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / (len(names) + 2)),
              ncol=len(present) or 1, frameon=False)
    return _save(fig, path)


def plot_staleness(history: pd.DataFrame, path: Path) -> Path:
    """How old the updates were when they arrived: accepted and dropped, stacked."""
    accepted = history[history.event == "update"].staleness.dropna().astype(int)
    late = history[history.event == "late"].staleness.dropna().astype(int)
    top = int(max([0, *accepted, *late]))
    bins = np.arange(top + 2) - 0.5
    fig = Figure(figsize=(6, 3.8))
    ax = fig.add_subplot()
    parts = [(accepted, "accepted", OUTCOMES["accepted"])]
    if len(late):
        parts.append((late, "dropped: late", OUTCOMES["dropped: late"]))
    ax.hist([p[0] for p in parts], bins=bins, stacked=True, color=[p[2] for p in parts],
            label=[p[1] for p in parts], edgecolor="white")
    ax.set_xticks(range(top + 1))
    ax.set_xlabel("staleness (global versions behind when it arrived)")
    ax.set_ylabel("updates")
    ax.set_title(f"staleness of {len(accepted) + len(late)} updates (mean accepted {accepted.mean() if len(accepted) else 0:.2f})")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_trials(trials: pd.DataFrame, path: Path) -> Path | None:
    """Objective per tuning trial (a bar each); ``None`` without a numeric objective."""
    column = objective_column(trials)
    if column is None:
        return None
    labels = trial_labels(trials)
    values = trials[column].to_numpy(dtype=float)
    fig = Figure(figsize=(max(5, 0.5 * len(values) + 2), 4))
    ax = fig.add_subplot()
    bars = ax.bar(range(len(values)), values, color="#1f77b4")
    ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(values)), labels, rotation=45 if len(values) > 6 else 0, ha="right" if len(values) > 6 else "center")
    ax.set_xlabel("trial")
    ax.set_ylabel(column)
    ax.set_title(f"{column} per trial")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_tuning(trials: pd.DataFrame, path: Path, confirmed: pd.DataFrame | None = None) -> Path:
    """A simulated search's trials as seconds to the target against reserved CPU-seconds,
    its Pareto front joined up (``trials.pareto``) and, after ``--confirm``, each
    re-measured trial's wall-clock seconds beside its prediction."""
    reached = trials[trials.reached.fillna(False).astype(bool)]
    front = reached[reached.pareto.astype(bool)].sort_values("cpu_seconds")
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    ax.scatter(reached.cpu_seconds, reached.time_to_target, color="#1f77b4", label="predicted (trial)")
    ax.plot(front.cpu_seconds, front.time_to_target, "o-", color="#d62728", label="Pareto front")
    if confirmed is not None:
        cost = dict(zip(trials.trial_id.astype(str), trials.cpu_seconds, strict=True))
        measured = confirmed[confirmed.trial_id.astype(str).isin(cost)]
        x = [cost[str(t)] for t in measured.trial_id]
        ax.scatter(x, measured.measured_s, marker="x", color="#2ca02c", label="measured (wall clock)")
    for row in front.itertuples():
        ax.annotate(str(row.trial_id), (row.cpu_seconds, row.time_to_target), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("reserved CPU-seconds")
    ax.set_ylabel("seconds to the target")
    ax.set_title("trials: time against cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def on_clock(run: RunResult, wall: bool = False) -> tuple[pd.DataFrame | None, str]:
    """The run's history with ``time`` on the clock to plot, and that clock's name: the
    run's own (``clock:`` in its config), or wall seconds when ``wall`` is asked for."""
    clock = str(run.config.get("clock", "wall"))
    history = run.history
    if history is not None and wall and "wall_time" in history:
        return history.assign(time=history.wall_time), "wall"
    return history, clock


def write_run_plots(run: RunResult, out_dir: Path | None = None, wall: bool = False) -> list[Path]:
    """All plots for one run into ``out_dir`` (default ``RUN/plots``); returns the files.
    ``wall``: plot wall seconds for a run on the simulated clock."""
    out_dir = out_dir or run.path / "plots"
    written = []
    history, clock = on_clock(run, wall)
    if history is not None:
        if (history.event == "evaluation").any():
            metric, _ = headline(history)
            written.append(plot_accuracy([("", history)], out_dir / f"{metric}_vs_time.png", x="time", clock=clock))
            written.append(plot_accuracy([("", history)], out_dir / f"{metric}_vs_aggregations.png", x="version"))
        if (history.event == "dispatch").any():
            written.append(plot_timeline(history, out_dir / "timeline.png"))
        written.append(plot_staleness(history, out_dir / "staleness.png"))
    if run.trials is not None:
        trials_png = plot_trials(run.trials, out_dir / "trials_objective.png")
        if trials_png is not None:
            written.append(trials_png)
    return written


def write_overlay(runs: Sequence[RunResult], path: Path, wall: bool = False) -> Path:
    """Several runs' accuracy against time on one plot, one line each (wall seconds when
    ``wall``, or when the runs' clocks differ)."""
    with_history = [run for run in runs if run.history is not None]
    labels = [run.label for run in with_history]
    if len(set(labels)) < len(labels):  # same directory names: the full paths tell them apart
        labels = [f"{run.path} ({run.label.partition(' (')[2].rstrip(')')})" for run in with_history]
    clocks = {on_clock(run)[1] for run in with_history}
    wall = wall or len(clocks) > 1  # simulated and wall seconds do not share an axis
    timed = [on_clock(run, wall) for run in with_history]
    return plot_accuracy(list(zip(labels, (h for h, _ in timed), strict=True)), path, x="time",
                         clock=timed[0][1] if timed else "wall")

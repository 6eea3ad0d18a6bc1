"""Tables that describe a finished run: the run as a whole and each participant.

Every number is computed from the run's history (``history.parquet``), the one record of
what happened, so a table can always be checked against the events behind it.
``summary.json`` only contributes what the history cannot say (why the run stopped).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from orchestrator.records.history import headline
from orchestrator.records.progress import FAILURE_EVENTS

ARRIVALS = ("update", "rejected", "late")
"""Events where a participant's payload reached the driver (accepted or not)."""

OBJECTIVE_COLUMNS = ("objective", "time_to_target", "time_to_accuracy", "best_accuracy", "final_accuracy", "accuracy")
"""Column names taken as a tuning trial's objective, first found wins."""


class ReportError(ValueError):
    """A directory that holds no run we can read; the message names the path."""


@dataclass
class RunResult:
    """One run directory, loaded: its history, summary, config and (tuning) trials."""

    path: Path
    history: pd.DataFrame | None
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    trials: pd.DataFrame | None = None

    @property
    def label(self) -> str:
        """A legend label: the directory name, and the schedule and strategy if known."""
        schedule = (self.config.get("schedule") or {}).get("mode")
        strategy = (self.config.get("strategy") or {}).get("name")
        extra = ", ".join(x for x in (schedule, strategy) if x)
        return f"{self.path.name} ({extra})" if extra else self.path.name


def load_run(path: str | Path) -> RunResult:
    """Read a run (or tuning) directory; a clear error if it holds neither."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"run directory not found: {path}")
    history = _read_table(path, "history")
    trials = _read_table(path, "trials")
    if history is None and trials is None:
        raise ReportError(
            f"{path}: no history.parquet / history.csv (a run) or trials.csv / trials.parquet "
            "(a tuning run) in this directory"
        )
    if history is not None:
        missing = {"time", "event", "participant", "task_id", "version"} - set(history.columns)
        if missing:
            raise ReportError(f"{path}: history lacks column(s) {sorted(missing)}")
    summary_path, config_path = path / "summary.json", path / "config.yaml"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    return RunResult(path, history, summary, config or {}, trials)


def _read_table(path: Path, stem: str) -> pd.DataFrame | None:
    parquet, csv = path / f"{stem}.parquet", path / f"{stem}.csv"
    try:
        if parquet.exists():
            return pd.read_parquet(parquet)
        if csv.exists():
            return pd.read_csv(csv)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise ReportError(f"cannot read {parquet if parquet.exists() else csv}: {exc}") from None
    return None


# -- the tables ------------------------------------------------------------------------


def run_summary(history: pd.DataFrame, summary: dict[str, Any] | None = None) -> pd.Series:
    """One run in one column: its headline metric, time, counts of each kind of event,
    staleness."""
    summary = summary or {}
    events = history.event
    metric, higher = headline(history)
    scores = history.loc[events == "evaluation", metric].dropna() if metric in history else pd.Series(dtype=float)
    updates = history[events == "update"]
    return pd.Series(
        {
            f"final {metric}": float(scores.iloc[-1]) if len(scores) else float("nan"),
            f"best {metric}": float(scores.max() if higher else scores.min()) if len(scores) else float("nan"),
            "wall seconds": float(history.time.max()),
            "aggregations": int((events == "aggregation").sum()),
            "updates dispatched": int((events == "dispatch").sum()),
            "updates accepted": int(len(updates)),
            "updates rejected": int((events == "rejected").sum()),
            "updates late (dropped)": int((events == "late").sum()),
            "failures": int(events.isin(FAILURE_EVENTS).sum()),
            "participants lost": int((events == "participant_lost").sum()),
            "mean staleness": float(updates.staleness.mean()) if len(updates) else 0.0,
            "max staleness": int(updates.staleness.max()) if len(updates) else 0,
            "time to target (s)": summary.get("time_to_target"),
            "stop reason": summary.get("stop_reason"),
        },
        name="run",
    )


def participant_table(history: pd.DataFrame) -> pd.DataFrame:
    """One row per participant: what it was asked to do, what came back, how fast.

    ``sent`` counts payloads that reached the driver (accepted, rejected or late);
    ``local s`` is the mean time a task took on the participant (simulated slowdown
    included), ``compute s`` the real compute inside it; ``samples/s`` is samples
    trained per second of ``local s``; the headline metric (``accuracy``, ``r2``, ...)
    appears only when participants reported one on their own test split.
    """
    rows = history[history.participant.notna() & (history.participant != "")]
    metric, _ = headline(history)
    columns = ["group", "dispatched", "sent", "accepted", "rejected", "late", "failed",
               "mean staleness", "max staleness", "local s", "compute s", "samples/s"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    out = []
    for name, own in rows.groupby("participant", sort=True):
        arrived = own[own.event.isin(ARRIVALS)]
        accepted = own[own.event == "update"]
        seconds = arrived.simulated_seconds.fillna(arrived.train_seconds)
        samples = arrived.get("samples", arrived.num_examples).fillna(arrived.num_examples)
        total_s = float(seconds.sum())
        row = {
            "participant": name,
            "group": own.group.dropna().iloc[0] if own.group.notna().any() else "",
            "dispatched": int((own.event == "dispatch").sum()),
            "sent": int(len(arrived)),
            "accepted": int(len(accepted)),
            "rejected": int((own.event == "rejected").sum()),
            "late": int((own.event == "late").sum()),
            "failed": int(own.event.isin(FAILURE_EVENTS).sum()),
            "mean staleness": float(accepted.staleness.mean()) if len(accepted) else float("nan"),
            "max staleness": float(accepted.staleness.max()) if len(accepted) else float("nan"),
            "local s": float(seconds.mean()) if len(arrived) else float("nan"),
            "compute s": float(arrived.train_seconds.mean()) if len(arrived) else float("nan"),
            "samples/s": float(samples.sum()) / total_s if total_s > 0 else float("nan"),
        }
        scored = own[metric].dropna() if metric in own else ()
        if len(scored):
            row[metric] = float(scored.iloc[-1])
        out.append(row)
    return pd.DataFrame(out).set_index("participant")


def compare_table(runs: Sequence[RunResult]) -> pd.DataFrame:
    """Several runs side by side, one column each (e.g. sync vs buffered)."""
    return pd.DataFrame({run.label: run_summary(run.history, run.summary) for run in runs if run.history is not None})


def objective_column(trials: pd.DataFrame) -> str | None:
    """The trials table's objective: ``objective`` if present, else a known metric."""
    for name in OBJECTIVE_COLUMNS:
        if name in trials.columns and pd.api.types.is_numeric_dtype(trials[name]):
            return name
    return None


def trial_labels(trials: pd.DataFrame) -> list[str]:
    for name in ("trial_id", "trial", "trial_name"):
        if name in trials.columns:
            return [str(x) for x in trials[name]]
    return [str(i) for i in range(len(trials))]


# -- printing ----------------------------------------------------------------------------


def print_frame(frame: pd.DataFrame | pd.Series, title: str, console: Any = None) -> None:
    """Print a DataFrame: a rich table on a terminal; pandas' plain text otherwise, which
    never wraps or truncates a column in a CI log or a pipe."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    if not console.is_terminal:
        text = frame.apply(lambda col: col.map(_cell)).to_string() if len(frame) else "(none)"
        console.file.write(f"{title}\n{text}\n\n")
        console.file.flush()
        return
    table = Table(title=title, title_justify="left", show_lines=False)
    index_name = frame.index.name or ""
    table.add_column(index_name, style="bold")
    for col in frame.columns:
        table.add_column(str(col), justify="right")
    for idx, values in frame.iterrows():
        table.add_row(str(idx), *(_cell(v) for v in values))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_report(run: RunResult, console: Any = None) -> None:
    """The run summary, the per-participant table and (tuning) the trials."""
    if run.history is not None:
        print_frame(run_summary(run.history, run.summary), f"run {run.path}", console)
        print_frame(participant_table(run.history), "participants", console)
    if run.trials is not None:
        print_frame(run.trials, f"trials in {run.path}", console)

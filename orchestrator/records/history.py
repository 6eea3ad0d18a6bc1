"""The run history: one row per event, kept as plain dicts, handed out as pandas.

Events: ``dispatch``, ``update`` (accepted), ``rejected``, ``late`` (dropped for being
late or too stale), ``failure``, ``dropout``, ``unavailable``, ``timeout``,
``aggregation``, ``round_skipped``, ``aggregation_aborted`` and ``secagg_dropout``
(secure aggregation), ``privacy`` (DP-FedAvg's epsilon), ``evaluation``,
``participant_lost``, ``checkpoint``, ``resumed``, ``stop``. Appending a dict is cheap
enough for the hot loop; the DataFrame is built once when someone asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from actors.spec.training import LOWER_IS_BETTER, METRICS

COLUMNS = [
    "time",  # seconds since the run started, by the run's clock (wall or simulated)
    "wall_time",  # seconds since the run started, by the driver's wall clock
    "event",
    "participant",
    "group",
    "task_id",
    "version",  # global version when the event happened
    "base_version",  # version the participant started from
    "staleness",
    "weight",
    "num_examples",
    "train_seconds",  # real seconds of local work
    "simulated_seconds",  # seconds the task appeared to take under the simulator
    "bytes",  # payload bytes moved by this event
    "loss",
    "accuracy",
    "metric",  # evaluation: the task's headline metric, whose column reports plot
    "in_flight",
    "detail",
]

METRIC_COLUMNS = tuple(dict.fromkeys(m for kind in METRICS.values() for m in kind))
"""Every task's metric columns; an evaluation row fills those of its task."""


def headline(frame: pd.DataFrame) -> tuple[str, bool]:
    """The run's headline metric (the ``metric`` its evaluations name; accuracy in a
    history from before tasks existed) and whether higher is better."""
    named = frame.loc[frame.event == "evaluation", "metric"].dropna() if "metric" in frame else ()
    name = str(named.iloc[-1]) if len(named) else "accuracy"
    return name, name not in LOWER_IS_BETTER


class History:
    """Append-only event log of a run.

    >>> h = History()
    >>> row = h.record("evaluation", version=1, accuracy=0.5)  # returns the row it logged
    >>> h.frame()[["event", "version", "accuracy"]].values.tolist()
    [['evaluation', 1, 0.5]]
    """

    def __init__(self, rows: list[dict[str, Any]] | None = None, start: float | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.start = time.perf_counter() if start is None else start
        self.clock = clock
        """The run's clock when it is not the wall clock (``clock: simulated``)."""
        self.listeners: list = []

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        wall = time.perf_counter() - self.start
        row = {"time": wall if self.clock is None else self.clock(), "wall_time": wall, "event": event, **fields}
        self.rows.append(row)
        for listener in self.listeners:
            listener(row)
        return row

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        for col in COLUMNS:
            if col not in frame.columns:
                frame[col] = pd.NA
        extra = [c for c in frame.columns if c not in COLUMNS]
        frame = frame[COLUMNS + extra]
        for col in ("version", "base_version", "staleness", "task_id", "num_examples", "bytes", "in_flight"):
            frame[col] = frame[col].astype("Int64")
        for col in ("time", "wall_time", "weight", "train_seconds", "simulated_seconds", "loss", "accuracy",
                    *(c for c in METRIC_COLUMNS if c in frame.columns)):
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        for col in ("event", "participant", "group", "metric", "detail"):
            frame[col] = frame[col].astype("string")
        return frame

    def save(self, directory: Path) -> Path:
        """Write ``history.parquet`` (and a CSV twin for quick looks)."""
        frame = self.frame()
        path = directory / "history.parquet"
        frame.to_parquet(path, index=False)
        frame.to_csv(directory / "history.csv", index=False)
        return path

"""Live progress while a run goes on: a rich bar on a terminal, plain lines in CI logs.

It listens to history rows (``History.listeners``), so it sees exactly what the run
records and never asks the run loop for anything.
"""

from __future__ import annotations

import math
import sys
from typing import Any, TextIO

FAILURE_EVENTS = ("failure", "timeout", "dropout")

SHORT = {"accuracy": "acc", "macro_f1": "f1", "auroc": "auc"}
"""How the status line abbreviates a headline metric (others print whole: r2, mse, mae)."""
"""Events counted as failures, the same set ``summary.json``'s ``num_failures`` counts."""


class Progress:
    """Shows aggregations done / target, accuracy, updates in flight, last staleness and
    failures so far.

    On a terminal it draws one live rich progress bar; otherwise (CI logs, a pipe) it
    prints one plain line per evaluation, which a log keeps readable. ``live`` forces one
    mode or the other.

    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress(stream=out, total=10, live=False)
    >>> p.on_event({"event": "evaluation", "version": 3, "accuracy": 0.5, "loss": 1.2, "time": 4.0})
    >>> p.close()
    >>> "agg    3/10" in out.getvalue() and "acc 0.5000" in out.getvalue()
    True
    """

    def __init__(self, stream: TextIO | None = None, total: int | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.total = total
        self.live = _is_terminal(self.stream) if live is None else live
        self.aggregations = 0
        self.metric = "accuracy"
        self.score = math.nan  # the headline metric's last value (accuracy, r2, ...)
        self.loss = math.nan
        self.in_flight = 0
        self.last_staleness = 0
        self.failures = 0
        self.rejected = 0
        self.seconds = 0.0
        self._bar: Any = None
        self._task: Any = None

    # -- the listener ----------------------------------------------------------------
    def on_event(self, row: dict[str, Any]) -> None:
        event = row["event"]
        self.seconds = float(row.get("time") or self.seconds)
        if row.get("in_flight") is not None:
            self.in_flight = int(row["in_flight"])
        if event == "update":
            self.last_staleness = int(row.get("staleness") or 0)
        elif event in FAILURE_EVENTS:
            self.failures += 1
        elif event in ("rejected", "late"):
            self.rejected += 1
        elif event == "aggregation":
            self.aggregations = int(row["version"])
        elif event == "evaluation":
            self.aggregations = int(row["version"])
            self.metric = str(row.get("metric") or "accuracy")
            self.score, self.loss = float(row[self.metric]), float(row["loss"])
            if not self.live:
                print(self.line(), file=self.stream, flush=True)
        if self.live:
            self._draw()

    def line(self) -> str:
        """The plain status line: aggregation, accuracy, loss, in flight, staleness,
        failures, seconds."""
        of = f"/{self.total}" if self.total else ""
        return (
            f"  agg {self.aggregations:>4}{of}  {SHORT.get(self.metric, self.metric)} {self.score:.4f}  loss {self.loss:.4f}  "
            f"in-flight {self.in_flight:>3}  staleness {self.last_staleness:>2}  "
            f"failures {self.failures:>3}  {self.seconds:7.1f}s"
        )

    def close(self) -> None:
        """Leave the final state of the bar on screen and release the terminal."""
        if self._bar is not None:
            self._draw()
            self._bar.stop()
            self._bar = None

    # -- the rich bar ----------------------------------------------------------------
    def _draw(self) -> None:
        if self._bar is None:
            self._start_bar()
        self._bar.update(
            self._task, completed=self.aggregations,
            metric=SHORT.get(self.metric, self.metric),
            score="-" if math.isnan(self.score) else f"{self.score:.4f}",
            in_flight=self.in_flight, staleness=self.last_staleness, failures=self.failures,
        )

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("aggregations"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metric]} [bold]{task.fields[score]}[/]"),
            TextColumn("in flight {task.fields[in_flight]}"),
            TextColumn("staleness {task.fields[staleness]}"),
            TextColumn("failures {task.fields[failures]}"),
            TimeElapsedColumn(),
            console=Console(file=self.stream, force_terminal=True),
            refresh_per_second=4,
        )
        self._task = self._bar.add_task(
            "run", total=self.total, metric="acc", score="-", in_flight=0, staleness=0, failures=0,
        )
        self._bar.start()


def one_line_per_cause(errors: list[tuple[str, str]]) -> list[str]:
    """``(participant, message)`` pairs as one line per distinct cause, with a count: 1,000
    participants failing alike are one line, not 1,000 (twice: stdout and the error).

    >>> one_line_per_cause([("s-1", "participant s-1: boom"), ("s-2", "participant s-2: boom"),
    ...                     ("s-3", "participant s-3: other")])
    ['participant s-1: boom (and 1 more participant alike: s-2)', 'participant s-3: other']
    """
    causes: dict[str, list[tuple[str, str]]] = {}
    for name, message in errors:
        causes.setdefault(message.replace(name, "\0"), []).append((name, message))
    lines = []
    for alike in causes.values():
        (_, message), others = alike[0], [name for name, _ in alike[1:]]
        if others:
            named = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            message += f" (and {len(others)} more participant{'s' if len(others) > 1 else ''} alike: {named})"
        lines.append(message)
    return lines


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())

"""Progress output while a run goes on: a line per evaluation, quiet on request."""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Progress:
    """Prints one line per evaluation with accuracy, in-flight tasks and staleness.

    Attach with ``Orchestrator(config, progress=Progress())``; it listens to history rows.
    """

    def __init__(self, stream: TextIO | None = None, total: int | None = None) -> None:
        self.stream = stream or sys.stdout
        self.total = total
        self.in_flight = 0
        self.last_staleness = 0
        self.failures = 0

    def on_event(self, row: dict[str, Any]) -> None:
        event = row["event"]
        if row.get("in_flight") is not None:
            self.in_flight = row["in_flight"]
        if event == "update":
            self.last_staleness = row.get("staleness", 0)
        elif event in ("failure", "timeout", "dropout"):
            self.failures += 1
        elif event == "evaluation":
            version = row["version"]
            of = f"/{self.total}" if self.total else ""
            print(
                f"  agg {version:>4}{of}  acc {row['accuracy']:.4f}  loss {row['loss']:.4f}  "
                f"in-flight {self.in_flight:>3}  staleness {self.last_staleness:>2}  "
                f"failures {self.failures:>3}  {row['time']:7.1f}s",
                file=self.stream, flush=True,
            )

    def close(self) -> None:
        pass

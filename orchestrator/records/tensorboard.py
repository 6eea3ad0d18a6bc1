"""Optional TensorBoard logging (``logging: {tensorboard: DIR}``) of the progress scalars.

Like :class:`orchestrator.records.progress.Progress` it is a history listener, so TensorBoard
shows the same numbers as the run history. It writes with ``tensorboardX`` (what Ray
Tune logs with), so neither TensorFlow nor the ``tensorboard`` server is needed to write;
view with ``tensorboard --logdir DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.records.history import METRIC_COLUMNS
from orchestrator.records.progress import FAILURE_EVENTS


class TensorBoardLogger:
    """Scalars per global version: ``eval/accuracy``, ``eval/loss``, ``run/in_flight``,
    ``run/failures``, ``run/max_staleness`` (of each aggregation), ``run/seconds``; and
    ``updates/staleness`` per accepted update (step = updates accepted so far).

    >>> # logger = TensorBoardLogger("runs/tb"); history.listeners.append(logger.on_event)
    """

    def __init__(self, logdir: str | Path) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise RuntimeError(
                f"logging.tensorboard={logdir}: needs the 'tensorboardX' package (pip install tensorboardX)"
            ) from exc
        self.logdir = Path(logdir)
        self.writer = SummaryWriter(logdir=str(self.logdir))
        self.failures = 0
        self.updates = 0

    def on_event(self, row: dict[str, Any]) -> None:
        event = row["event"]
        if event in FAILURE_EVENTS:
            self.failures += 1
        elif event == "update":
            self.updates += 1
            self.writer.add_scalar("updates/staleness", float(row.get("staleness") or 0), self.updates)
        elif event == "aggregation":
            step = int(row["version"])
            self.writer.add_scalar("run/in_flight", float(row.get("in_flight") or 0), step)
            self.writer.add_scalar("run/max_staleness", float(row.get("staleness") or 0), step)
            self.writer.add_scalar("run/failures", float(self.failures), step)
            self.writer.add_scalar("run/seconds", float(row["time"]), step)
        elif event == "evaluation":
            step = int(row["version"])
            for name in ("loss", *METRIC_COLUMNS):  # the task's metrics: NaN ones are skipped
                if row.get(name) is not None and row[name] == row[name]:
                    self.writer.add_scalar(f"eval/{name}", float(row[name]), step)

    def close(self) -> None:
        self.writer.close()

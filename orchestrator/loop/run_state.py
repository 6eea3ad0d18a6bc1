"""The driver's state of one run: exactly what a checkpoint saves.

Everything the run loop changes between two events lives in one :class:`RunState`, so
the loop reads as a function of it and a checkpoint is this object, pickled. The parts
other objects own (the strategy's server optimizer state, the schedule's round and
random generator, the privacy accountant, each participant's task counters, the history)
are copied into it by :meth:`RunState.snapshot` just before it is written, and handed
back by :func:`orchestrator.loop.checkpoint.restore`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.spec.training import LOWER_IS_BETTER
from strategies.types import Layout, Update


@dataclass
class RunState:
    """One run's global model and counters, plus the owned parts at checkpoint time."""

    run_id: str
    params: np.ndarray
    layout: Layout
    version: int = 0
    buffer: list[Update] = field(default_factory=list)
    """Admitted updates waiting for the schedule to aggregate them."""
    next_task_id: int = 0
    num_updates: int = 0
    tasks_without_update: int = 0
    """Finished tasks since the last accepted update: a run where nothing is accepted stalls."""
    last_eval: dict[str, float] = field(default_factory=dict)
    time_to_target: float | None = None
    # filled in by snapshot(): what other objects own
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    owned: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``state_dict()`` of the strategy, the schedule, privacy and adaptive local work."""
    history_rows: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0

    def evaluated(self, metrics: dict[str, float], target: tuple[str, float] | None, now: float) -> None:
        """Remember an evaluation of this version, and when the ``(metric, value)`` target
        was first reached (at least the value, or at most it for an error metric)."""
        self.last_eval = {**metrics, "version": self.version}
        if target is None or self.time_to_target is not None:
            return
        metric, value = target
        reached = metrics[metric] <= value if metric in LOWER_IS_BETTER else metrics[metric] >= value
        if reached:
            self.time_to_target = now

    def snapshot(self, members: dict[str, dict[str, Any]], owned: dict[str, dict[str, Any]],
                 history_rows: list[dict[str, Any]], elapsed: float) -> RunState:
        """A deep copy with the owned parts filled in: safe to pickle while the run goes on."""
        out = copy.copy(self)
        out.params = np.array(self.params, dtype=np.float32, copy=True)
        out.buffer = list(self.buffer)
        out.last_eval = dict(self.last_eval)
        out.members = copy.deepcopy(members)
        out.owned = copy.deepcopy(owned)
        out.history_rows = [dict(row) for row in history_rows]
        out.elapsed = elapsed
        return out

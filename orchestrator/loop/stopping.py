"""When a run stops: the first stop condition that holds, as the reason the run records.

A pure function of the config and the run state, so each rule is tested with numbers.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from orchestrator.config import RunConfig
from orchestrator.loop.run_state import RunState
from strategies.types import Update

STALL_TASKS_PER_PARTICIPANT = 20
"""Stop as stalled after this many finished tasks per live participant in a row without one
accepted update (everyone drops out, say), so a run whose max_aggregations can never be
reached still ends."""


def stop_reason(config: RunConfig, state: RunState, alive: int, now: float,
                wall: float | None = None) -> str | None:
    """Why the run must stop now, or None. ``now`` is the run's clock; ``max_wall_s``
    counts real seconds (``wall``, the same as ``now`` unless the clock is simulated).

    >>> import numpy as np
    >>> from orchestrator.config import load_config
    >>> from strategies.types import Layout
    >>> config = load_config({"dataset": {}, "groups": [{"name": "a", "count": 2}],
    ...                       "stop": {"max_aggregations": 3}})
    >>> state = RunState("r", np.zeros(1, np.float32), Layout(("w",), ((1,),)), version=3)
    >>> stop_reason(config, state, alive=2, now=1.0)
    'reached max_aggregations=3'
    """
    stop = config.stop
    if stop.max_aggregations is not None and state.version >= stop.max_aggregations:
        return f"reached max_aggregations={stop.max_aggregations}"
    if stop.max_updates is not None and state.num_updates >= stop.max_updates:
        return f"reached max_updates={stop.max_updates}"
    if stop.max_wall_s is not None and (now if wall is None else wall) >= stop.max_wall_s:
        return f"reached max_wall_s={stop.max_wall_s}"
    if state.time_to_target is not None:
        metric, value = config.target or ("accuracy", float("nan"))
        return f"reached target {metric}={value:g}"
    if alive < config.schedule.min_participants:
        return f"only {alive} participants left, min_participants={config.schedule.min_participants}"
    if state.tasks_without_update >= STALL_TASKS_PER_PARTICIPANT * max(alive, 1):
        return f"stalled: no update accepted in the last {state.tasks_without_update} finished tasks"
    return None


DIVERGENCE_WINDOW = 10
"""Arrivals the divergence rule looks back over: when more than half of the last this many
diverged, the run stops with why (four clinics on a raw regression target otherwise had
all 80 updates rejected, then stopped "stalled" with R² -3.83)."""


def diverged(update: Update) -> bool:
    """Whether the task's local training blew up: a non-finite loss after at least one
    step, or non-finite values in a plaintext payload."""
    loss = float(update.metrics.get("train_loss", 0.0))
    if update.metrics.get("steps", 1.0) > 0 and not math.isfinite(loss):
        return True
    return update.payload.size > 0 and not bool(np.isfinite(update.payload).all())


class Divergence:
    """Watches arrivals for diverged training and says, once most recent ones diverge, why
    the run should stop and what to change; a lone bad participant does not stop it.

    >>> watch = Divergence(window=4)
    >>> for name in "abcd":
    ...     watch.observe(name, diverged=name != "a", loss=float("nan"), steps=12)
    >>> watch.stopping, watch.reason(target_std=None, hint="lower train.lr")
    (True, 'training diverged at participant b (loss became NaN after 12 steps): lower train.lr')
    """

    def __init__(self, window: int = DIVERGENCE_WINDOW) -> None:
        self.recent: deque[bool] = deque(maxlen=window)
        self.first: tuple[str, float, int] | None = None
        """The run's first diverged arrival: participant, its loss, its local steps."""

    def observe(self, participant: str, diverged: bool, loss: float, steps: int) -> None:
        self.recent.append(diverged)
        if diverged and self.first is None:
            self.first = (participant, loss, steps)

    @property
    def stopping(self) -> bool:
        """More than half of a full window of recent arrivals diverged."""
        window = self.recent.maxlen or 0
        return self.first is not None and len(self.recent) >= window and 2 * sum(self.recent) > window

    def reason(self, target_std: float | None, hint: str) -> str:
        """The one-line stop reason. ``target_std``: a raw regression target's std, named
        because a large one is the usual cause; ``hint``: what to change."""
        assert self.first is not None
        name, loss, steps = self.first
        what = "its update became non-finite" if math.isfinite(loss) else f"loss became {'NaN' if math.isnan(loss) else 'inf'}"
        std = "" if target_std is None else f"; the target's std is {target_std:.4g}"
        return f"training diverged at participant {name} ({what} after {steps} steps){std}: {hint}"


def divergence_message(divergence: Divergence, config: RunConfig, global_model: Any) -> str:
    """Why most updates came back non-finite, and what to change: on a regression target
    in raw units (its std from the driver's test set), standardizing it."""
    if config.task.kind != "regression" or config.standardizes_target:
        return divergence.reason(None, "lower train.lr")
    evaluator = getattr(global_model, "evaluator", None)  # only a shared model has one
    std = evaluator.info.target_std if evaluator is not None else None
    fix = "set preprocess.standardize_target" if config.preprocess else "add preprocess: {standardize: true}"
    return divergence.reason(std, f"lower train.lr or {fix}")

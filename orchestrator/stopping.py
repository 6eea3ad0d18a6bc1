"""When a run stops: the first stop condition that holds, as the reason the run records.

A pure function of the config and the run state, so each rule is tested with numbers.
"""

from __future__ import annotations

from orchestrator.config import RunConfig
from orchestrator.run_state import RunState

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

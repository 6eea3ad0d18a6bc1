"""The run's clock: real seconds for deployments, simulated seconds for simulations.

``clock: wall`` (the default) is what a real federation lives by: a task lasts as long as
it really takes, and the driver takes whichever result lands first (``ray.wait``).

``clock: simulated`` makes a laptop behave like a fleet whatever its load. Each task's
duration comes from the system model (samples x ``simulated_seconds_per_sample`` / speed,
plus bytes / bandwidth), fixed when the task is dispatched. The driver handles results in
simulated-time order, a discrete-event simulation: it waits, in real time, only for the
task due first in simulated time, while every other task computes in parallel. Nobody
sleeps, and for given seeds the run is the same on a quiet and on a loaded machine.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from orchestrator.records.history import History


class WallClock:
    """Seconds since the run started, by the driver's wall clock."""

    simulated = False

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start

    def now(self) -> float:
        return time.perf_counter() - self.start

    def state_dict(self) -> dict[str, float]:
        return {"now": self.now()}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue a resumed run's clock where its checkpoint stopped."""
        self.start = time.perf_counter() - state["now"]

    def started(self, ref: ray.ObjectRef, dispatched_at: float, task_id: int, duration: float) -> None:
        """A task went out; the wall clock learns its duration when it lands."""

    def dropped(self, ref: ray.ObjectRef) -> None:
        """A task was abandoned (timed out)."""

    def wait(self, in_flight: list[ray.ObjectRef], timeout: float | None) -> list[ray.ObjectRef]:
        """The first task to land (or none within ``timeout``) and every other already done."""
        ready, _ = ray.wait(in_flight, num_returns=1, timeout=timeout)
        if ready:
            rest = [r for r in in_flight if r not in ready]
            if rest:
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return ready

    def sleep(self, seconds: float | None) -> None:
        time.sleep(seconds or 0.0)


REAL_TIMEOUT_S = 1800.0
"""Under the simulated clock, how many real seconds the driver waits for the task due
first before it ends it as a failure: a hung task must not freeze the run."""


class TaskHung(RuntimeError):
    """The task due first gave no result within the real-time ceiling."""

    def __init__(self, ref: ray.ObjectRef, seconds: float) -> None:
        super().__init__(f"no result after {seconds:g} s of real time (the simulated clock's ceiling)")
        self.ref = ref


class SimulatedClock:
    """Simulated seconds: time moves when the next event in simulated time is handled.

    >>> clock = SimulatedClock()
    >>> clock.sleep(2.5)
    >>> clock.now()
    2.5
    """

    simulated = True

    def __init__(self, real_timeout_s: float = REAL_TIMEOUT_S) -> None:
        self.real_timeout_s = real_timeout_s
        self._now = 0.0
        self._due: dict[Any, tuple[float, int]] = {}  # ref -> (finish time, task id)

    def now(self) -> float:
        return self._now

    def state_dict(self) -> dict[str, float]:
        return {"now": self._now}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._now = state["now"]  # tasks in flight at the checkpoint are not resumed

    def started(self, ref: ray.ObjectRef, dispatched_at: float, task_id: int, duration: float) -> None:
        self._due[ref] = (dispatched_at + duration, task_id)

    def dropped(self, ref: ray.ObjectRef) -> None:
        self._due.pop(ref, None)

    def due(self, ref: ray.ObjectRef) -> float:
        """When the task comes back, in simulated seconds."""
        return self._due[ref][0]

    def wait(self, in_flight: list[ray.ObjectRef], timeout: float | None) -> list[ray.ObjectRef]:
        """The task due first (ties: the earlier task id), once it has really finished; or
        nothing, with the clock moved on by ``timeout``, when that comes first. Raises
        :class:`TaskHung` when that task has not really finished within ``real_timeout_s``
        (the clock stays where it is; the caller ends the task)."""
        if not in_flight:
            self.sleep(timeout)
            return []
        ref = min(in_flight, key=self._due.__getitem__)
        finish = self._due[ref][0]
        if timeout is not None and self._now + timeout < finish:
            self._now += timeout
            return []
        done, _ = ray.wait([ref], num_returns=1, timeout=self.real_timeout_s)  # real time: the computation
        if not done:
            del self._due[ref]
            raise TaskHung(ref, self.real_timeout_s)
        self._now = max(self._now, finish)
        del self._due[ref]
        return [ref]

    def sleep(self, seconds: float | None) -> None:
        self._now += seconds or 0.0


Clock = WallClock | SimulatedClock


def make_clock(kind: str, history: History) -> Clock:
    """The clock ``clock:`` in the config names; the history stamps its events with it
    (and with wall seconds always)."""
    if kind == "simulated":
        clock = SimulatedClock()
        history.clock = clock.now
        return clock
    return WallClock(history.start)

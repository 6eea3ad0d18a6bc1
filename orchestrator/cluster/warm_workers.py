"""Pool workers kept warm between the runs of one driver process.

Starting a pool worker costs a process, torch's import and the participants' first
set-up: seconds on a laptop, more than a short run spends training. A driver that runs
again (a notebook, ``fedray tune``'s trials, a test session) takes back an idle worker
started with the same resources and settings instead of starting a new one. At the end
of its run a worker forgets every participant it served (:meth:`PoolWorker.reset
<actors.participant.pool.PoolWorker.reset>`); one that cannot (a task still running, the
process gone) is not used again.

Idle workers hold their Ray resources until the next run claims them, or the driver
exits, or ``WARM.release()`` is called; a run kills the idle workers it does not claim
before it starts its own actors, so they never take a run's resources.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import ray

RESET_TIMEOUT_S = 10.0
"""How long a claim waits for an idle worker's reset before starting a new one instead."""


@dataclass
class _Idle:
    key: str
    handle: Any
    job: str
    threads: int


def _job() -> str:
    """The Ray cluster and job this driver runs as: handles from an earlier ``ray.init``
    are dead (a new local Ray reuses the job id, not the address)."""
    context = ray.get_runtime_context()
    return f"{context.gcs_address}/{context.get_job_id()}"


def worker_key(options: dict[str, Any], *settings: Any) -> str | None:
    """What two workers must share to be interchangeable: their actor options and the
    settings they were built with, except ``max_concurrency`` (a worker with more task
    threads than a run needs serves it as well: :meth:`WarmWorkers.claim`). None for a
    worker bound to a placement group (the group goes with its run)."""
    strategy = options.get("scheduling_strategy")
    if strategy is not None and not isinstance(strategy, str):
        return None
    return repr((sorted((k, v) for k, v in options.items() if k != "max_concurrency"), settings))


class WarmWorkers:
    """Idle pool workers by key; thread-safe (``fedray tune`` runs trials side by side)."""

    def __init__(self) -> None:
        self._idle: list[_Idle] = []
        self._lock = threading.Lock()
        self.enabled = True
        """False: runs start their own workers and kill them at the end."""

    def claim(self, wanted: list[tuple[str | None, int]]) -> list[Any | None]:
        """For each (key, task threads), an idle worker started with that key and at least
        that many threads (the fewest such), reset and alive, or None; the idle workers
        left unclaimed are killed, so their resources are free for the run."""
        with self._lock:
            idle, self._idle = sorted(self._idle, key=lambda w: w.threads), []
        job = _job() if idle else ""
        claimed: list[Any | None] = []
        for key, threads in wanted:
            fits = (w for w in idle if w.key == key and w.job == job and w.threads >= threads)
            match = next(fits, None) if key else None
            if match is not None:
                idle.remove(match)
            claimed.append(match.handle if match is not None and _ready(match) else None)
        for worker in idle:
            if worker.job == job:
                _kill(worker.handle)
        return claimed

    def keep(self, key: str | None, handle: Any, threads: int) -> None:
        """Keep ``handle`` (started with ``threads`` task threads) for a later run (it
        starts forgetting its participants now), or kill it when it cannot be reused."""
        if key is None or not self.enabled:
            _kill(handle)
            return
        try:
            handle.reset.remote()  # frees the participants' memory now
            worker = _Idle(key, handle, _job(), threads)
        except Exception:  # noqa: BLE001 (Ray gone: nothing left to keep)
            return
        with self._lock:
            self._idle.append(worker)

    def release(self) -> None:
        """Kill every idle worker (a driver that leaves Ray running frees their resources)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            _kill(worker.handle)

    def count(self) -> int:
        """Idle workers kept now."""
        with self._lock:
            return len(self._idle)


def _ready(worker: _Idle) -> bool:
    """Whether the worker is alive and idle (a reset answers both); one that is not is killed."""
    try:
        if ray.get(worker.handle.reset.remote(), timeout=RESET_TIMEOUT_S):
            return True
    except Exception:  # noqa: BLE001 (dead, restarting, or still busy: start a new one)
        pass
    _kill(worker.handle)
    return False


def _kill(handle: Any) -> None:
    with contextlib.suppress(Exception):  # already dead, or Ray already shut down
        ray.kill(handle, no_restart=True)


WARM = WarmWorkers()
"""This driver process's idle pool workers."""

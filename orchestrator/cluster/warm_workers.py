"""Pool workers kept warm between the runs of one driver process.

Starting a pool worker costs a process, torch's import and the participants' first
set-up: seconds on a laptop, more than a short run spends training. A driver that runs
again (a notebook, ``fedray tune``'s trials, a test session) takes back an idle worker
started with the same resources and settings instead of starting a new one. At the end
of its run a worker forgets every participant it served (:meth:`PoolWorker.reset
<actors.participant.pool.PoolWorker.reset>`); one that cannot (a task still running, the
process gone) is not used again.

Across drivers: a driver that joins a running cluster (``fedray run --address auto`` after
``ray start --head``) starts its pool workers detached and named in Ray namespace
:data:`NAMESPACE`, so they outlive it, and the next driver of the same fedray code claims
them by name: the second run of the day starts no process. A worker is leased by one
driver at a time (:meth:`PoolWorker.lease <actors.participant.pool.PoolWorker.lease>`).
``fedray release`` kills them; ``ray stop`` does too.

Idle workers hold their Ray resources until a run claims them, or the driver exits, or
``WARM.release()`` is called. A run that does not claim them keeps them idle only when,
on a one-node Ray, everything it starts fits in what the cluster has free beside them;
otherwise it kills them before it starts its own actors, so they never take a run's
resources. So a notebook or a test session that alternates between two settings keeps
both sets warm, and at most ``MAX_IDLE`` idle workers are kept in all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
import threading
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import ray

RESET_TIMEOUT_S = 10.0
"""How long a claim waits for an idle worker's reset before starting a new one instead."""
MAX_IDLE = 16
"""Idle workers kept at most (the oldest go first): each holds a process with torch in it."""
NAMESPACE = "fedray"
"""The Ray namespace of pool workers that outlive their driver."""


@dataclass
class _Idle:
    key: str
    handle: Any
    job: str
    threads: int
    resources: dict[str, float]


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


@functools.cache
def code_version() -> str:
    """A digest of the fedray source this process runs (and its Python and torch): a worker
    started from other code must never serve a run. The interpreter counts by its
    environment and resolved path, not by the name it was started under: the ``fedray``
    command runs ``bin/python3`` and a notebook ``bin/python`` of the same venv, and each
    must claim the workers the other left."""
    root = Path(__file__).resolve().parents[2]
    interpreter = f"{sys.prefix}:{os.path.realpath(sys.executable)}:{sys.version}"
    digest = hashlib.sha1(f"{interpreter}:{metadata.version('torch')}".encode())
    for package in ("actors", "strategies", "orchestrator"):
        for path in sorted((root / package).rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def _digest(key: str) -> str:
    return hashlib.sha1(f"{key}:{code_version()}".encode()).hexdigest()[:12]


class WarmWorkers:
    """Idle pool workers by key; thread-safe."""

    def __init__(self) -> None:
        self._idle: list[_Idle] = []
        self._lock = threading.Lock()
        self._latest = 0
        """Workers kept since the last claim: the latest run's, never dropped for older ones."""
        self.enabled = True
        """False: runs start their own workers and kill them at the end."""
        self.shared = False
        """True while this driver is joined to a cluster that outlives it (set on joining):
        its pool workers are detached and named, for later drivers to claim."""
        self.driver = uuid.uuid4().hex
        """This driver's name in leases."""

    def options(self, key: str | None, threads: int) -> dict[str, Any]:
        """Extra actor options for a new pool worker: detached and named when shared."""
        if not (self.shared and self.enabled and key):
            return {}
        name = f"pool-{_digest(key)}-t{threads}-{uuid.uuid4().hex[:8]}"
        return {"name": name, "namespace": NAMESPACE, "lifetime": "detached"}

    def claim(self, wanted: list[tuple[str | None, int, dict[str, float]]],
              also: dict[str, float] | None) -> list[Any | None]:
        """For each (key, task threads, resources), an idle worker started with that key
        and at least that many threads (the fewest such), reset and alive, or None. The
        idle workers left unclaimed stay idle when the resources of the workers still to
        start, and ``also`` (the run's other actors; None: not known, e.g. placement
        groups), fit in what Ray has free on its one node; else they are killed, so their
        resources are free for the run."""
        if self.shared:
            return self._claim_shared(wanted, also)
        with self._lock:
            idle, self._idle, self._latest = self._idle, [], 0  # oldest first
        job = _job() if idle else ""
        claimed: list[Any | None] = []
        needed = dict(also or {})
        placed = also is not None and all(key for key, _, _ in wanted)
        for key, threads, resources in wanted:
            fits = (w for w in sorted(idle, key=lambda w: w.threads)
                    if w.key == key and w.job == job and w.threads >= threads)
            match = next(fits, None) if key else None
            if match is not None:
                idle.remove(match)
            claimed.append(match.handle if match is not None and _ready(match.handle) else None)
            if claimed[-1] is None:
                needed = add(needed, resources)
        idle = [w for w in idle if w.job == job]
        if idle and placed and _room_for(needed):
            with self._lock:
                self._idle = idle + self._idle
        else:
            for worker in idle:
                _kill(worker.handle)
        return claimed

    def _claim_shared(self, wanted: list[tuple[str | None, int, dict[str, float]]],
                      also: dict[str, float] | None) -> list[Any | None]:
        """:meth:`claim` among the named workers earlier drivers left on the cluster."""
        found = shared_workers()
        claimed: list[Any | None] = []
        needed, taken = dict(also or {}), set()
        for key, threads, resources in wanted:
            handle = None
            for name, digest, has in sorted(found, key=lambda f: f[2]) if key else []:
                if name in taken or digest != _digest(key) or has < threads:
                    continue
                taken.add(name)
                candidate = _named(name)
                if candidate is not None and _lease(candidate, self.driver) and _ready(candidate):
                    handle = candidate
                    break
            claimed.append(handle)
            if handle is None:
                needed = add(needed, resources)
        if also is None or not _room_for(needed):  # the run needs what they hold
            for name, _, _ in found:
                if name not in taken and (other := _named(name)) is not None and _lease(other, self.driver):
                    _kill(other)
        return claimed

    def keep(self, handle: Any, key: str | None, threads: int, resources: dict[str, float]) -> None:
        """Keep ``handle`` (started with ``threads`` task threads, holding ``resources``)
        for a later run (it starts forgetting its participants now), or kill it when it
        cannot be reused. Idle workers of earlier runs go, oldest first, while more than
        ``MAX_IDLE`` are kept or they all hold more than half the cluster's CPUs: the rest
        stays free for the driver's own actors and tasks."""
        if key is None or not self.enabled:
            _kill(handle)
            return
        if self.shared:  # on the cluster, under its name, for the next driver
            with contextlib.suppress(Exception):
                handle.reset.remote()
                handle.lease.remote(None)
            return
        try:
            handle.reset.remote()  # frees the participants' memory now
            worker = _Idle(key, handle, _job(), threads, resources)
            half = ray.cluster_resources().get("CPU", 0.0) / 2
        except Exception:  # noqa: BLE001 (Ray gone: nothing left to keep)
            return
        with self._lock:
            self._idle.append(worker)
            self._latest += 1
            oldest = []
            while len(self._idle) > self._latest and (len(self._idle) > MAX_IDLE or
                                                      sum(w.resources.get("CPU", 0.0) for w in self._idle) > half):
                oldest.append(self._idle.pop(0))
        for extra in oldest:
            _kill(extra.handle)

    def release(self) -> None:
        """Kill every idle worker (a driver that leaves Ray running frees their resources)."""
        with self._lock:
            idle, self._idle, self._latest = self._idle, [], 0
        for worker in idle:
            _kill(worker.handle)

    def count(self) -> int:
        """Idle workers kept now."""
        with self._lock:
            return len(self._idle)


def add(total: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    """Two resource requests together."""
    return {k: total.get(k, 0.0) + more.get(k, 0.0) for k in total.keys() | more.keys()}


def _room_for(needed: dict[str, float]) -> bool:
    """Whether ``needed`` fits in what Ray has free now (idle workers hold theirs), on a
    one-node Ray (on several, free totals say nothing of any one node)."""
    try:
        if len([n for n in ray.nodes() if n.get("Alive")]) != 1:
            return False
        free = ray.available_resources()
    except Exception:  # noqa: BLE001 (Ray gone: nothing to keep them for)
        return False
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in needed.items() if v)


def _ready(handle: Any) -> bool:
    """Whether the worker is alive and idle (a reset answers both); one that is not is killed."""
    try:
        if ray.get(handle.reset.remote(), timeout=RESET_TIMEOUT_S):
            return True
    except Exception:  # noqa: BLE001 (dead, restarting, or still busy: start a new one)
        pass
    _kill(handle)
    return False


def shared_workers() -> list[tuple[str, str, int]]:
    """(name, key digest, task threads) of every named pool worker on the cluster."""
    out = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        parts = entry["name"].split("-")
        if entry["namespace"] == NAMESPACE and len(parts) == 4 and parts[0] == "pool":
            out.append((entry["name"], parts[1], int(parts[2][1:])))
    return out


def _named(name: str) -> Any | None:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:  # gone since it was listed
        return None


def _lease(handle: Any, driver: str) -> bool:
    try:
        return bool(ray.get(handle.lease.remote(driver), timeout=RESET_TIMEOUT_S))
    except Exception:  # noqa: BLE001 (dead or unresponsive: not ours to use)
        return False


def release_shared(force: bool = False) -> int:
    """Kill every idle pool worker fedray left on the cluster (``fedray release``); one a
    driver holds is left alone unless ``force`` (a driver killed mid-run never gives its
    workers back). How many were killed."""
    ended = [h for name, _, _ in shared_workers()
             if (h := _named(name)) is not None and (force or _lease(h, "release-" + WARM.driver))]
    for handle in ended:
        _kill(handle)
    return len(ended)


def _kill(handle: Any) -> None:
    with contextlib.suppress(Exception):  # already dead, or Ray already shut down
        ray.kill(handle, no_restart=True)


WARM = WarmWorkers()
"""This driver process's idle pool workers."""

"""A pool worker: one Ray actor that serves many participants, one task at a time.

Dedicated hosting gives every participant its own process; that is right for a hospital
pinned to its node, and too heavy for a simulation of hundreds of participants on a
laptop, where each process costs its own torch import and memory. A pool worker keeps a
bounded cache of :class:`~actors.participant.participant.Participant` objects. Each loads its own data
inside this worker the first time it is served and keeps its private state (client state,
simulator random state, DP-SGD budget) in its own state directory after every task, so a
participant evicted from the cache, or served after the worker restarted, goes on from
where it was. The driver never reads that state; it only names the participant.

The driver registers each participant once (:meth:`PoolWorker.register`, or a spec in
place of the name in any call) and then names it in calls that mirror the Participant's.

Each task is its own call in its own thread (``max_concurrency``: :func:`task_threads`),
so a fast participant is never held back by a straggler served by the same worker. The
tasks take turns computing (the worker's baton, :class:`~actors.participant.cohort.Cohort`),
their simulated waits overlap, and tasks sent as one batch train together. A task the
driver abandons (``task_timeout_s``, through ``ray.cancel``) stops at its next wait; one
stuck in its own computation keeps its thread, and that participant's next task fails at
once rather than run beside it.

This module imports no torch: Ray imports an actor's module in every driver that creates
or looks up (``ray.get_actor``) the actor, so the torch-heavy participant and cohort code
loads in the worker on first use, and a driver on pool workers never imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from actors.data.tables import DataError
from actors.participant import private_state
from actors.participant.summing import WorkerSum, sum_checked
from actors.participant.system import never_waits
from actors.spec.participant import ParticipantSpec
from strategies.types import GlobalState, Instructions, Update

if TYPE_CHECKING:
    from actors.participant.batching_probe import Probe
    from actors.participant.cohort import Cohort
    from actors.participant.participant import Participant

DEFAULT_CACHE = 64
"""Participants a worker keeps set up (data and model in memory) at the most."""

TASK_THREADS_MAX = 1024
"""Tasks one worker runs at once at the most; beyond that they queue in Ray."""

ABANDON_GRACE_S = 5.0
"""How long a participant's new task waits for its abandoned one to stop."""

SPARE_THREADS = 2
"""Threads beside the tasks' (describe, discarding state, an abandoned task still stuck)."""


def task_threads(served: int) -> int:
    """The worker's ``max_concurrency``: a thread for each participant it serves (each
    has at most one task in flight, so a cohort never waits for a member without one),
    up to :data:`TASK_THREADS_MAX`, and :data:`SPARE_THREADS`.

    >>> task_threads(3)
    5
    """
    return min(served, TASK_THREADS_MAX) + SPARE_THREADS


Who = str | ParticipantSpec
"""How a call names its participant: by name once registered, or by the spec that registers it."""


class NotRegistered(LookupError):
    """A call named a participant this worker has no spec for (Ray restarted it): the driver sends the spec again."""


@dataclass(frozen=True)
class CouldNotStart:
    """:meth:`PoolWorker.describe_each`'s answer for a participant that could not set up: why."""

    message: str


class ParticipantBusy(RuntimeError):
    """The participant's previous task, abandoned by the driver, is still running here."""


def _cancelled() -> bool:
    """Whether the driver cancelled the Ray task this thread runs (False outside Ray)."""
    if not ray.is_initialized():
        return False
    try:
        return ray.get_runtime_context().is_canceled()
    except RuntimeError:  # not inside an actor task (an in-process test)
        return False


def _pause(seconds: float) -> None:
    """The simulator's sleep, cut short when the driver abandons the task."""
    from actors.participant.cohort import POLL_S, TaskAbandoned

    end = time.perf_counter() + seconds
    while (left := end - time.perf_counter()) > 0:
        if _cancelled():
            raise TaskAbandoned("the driver abandoned this task (task_timeout_s)")
        time.sleep(min(left, POLL_S))


class PoolWorker:
    """Serves any participant it is given; keeps the ``cache_size`` most recent set up."""

    def __init__(self, cache_size: int = DEFAULT_CACHE, cache_mb: float | None = None) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.cache_size = cache_size
        self.cache_bytes = None if cache_mb is None else cache_mb * 2**20
        self._specs: dict[str, ParticipantSpec] = {}  # the registered participants, by name
        self._served: OrderedDict[str, Participant] = OrderedDict()
        self._lock = threading.Lock()  # task threads and secure aggregation's masking thread look up too
        self._busy: set[str] = set()  # participants with a task running here: never evicted
        self._ended = threading.Condition(self._lock)  # a task of one of them ended
        self._baton = threading.Lock()  # one task computes at a time (actors/participant/cohort.py)
        self._cohorts: dict[int, Cohort] = {}
        self._holder: str | None = None  # the driver that leased this worker, when drivers share it
        self._hosted: dict[str, Any] = {}  # objects the driver keeps here (host_call), by key

    def register(self, specs: list[ParticipantSpec]) -> None:
        """Serve these participants, or update their specs (the run's fitted preprocessing
        is added to a spec after the participant was first served); later calls name them."""
        with self._lock:
            self._specs |= {spec.name: spec for spec in specs}

    def _spec(self, who: Who) -> ParticipantSpec:
        """The spec of the participant a call names; a spec registers it."""
        if isinstance(who, ParticipantSpec):
            self.register([who])
            return who
        with self._lock:
            spec = self._specs.get(who)
        if spec is None:
            raise NotRegistered(f"participant {who} is not registered with this pool worker (it restarted); "
                                "the driver sends its spec again")
        return spec

    def _participant(self, spec: ParticipantSpec) -> Participant:
        """The participant, from the cache or new (it sets itself up on first use); the
        least recent are evicted first, so no more than ``cache_size`` are ever set up."""
        with self._lock:
            participant = self._served.pop(spec.name, None)
            if participant is None:
                from actors.participant.participant import Participant

                participant = Participant(spec)
            elif spec.transform is not None:  # served for its statistics before the fit
                participant.adopt(spec.transform)
            self._served[spec.name] = participant
        self._trim(spec.name)
        return participant

    def _serve(self, who: Who, method: str, *args: Any) -> Any:
        """Every call goes through here: the participant's ``method``, then a second trim,
        because only once it is set up does its size count against ``cache_mb``."""
        spec = self._spec(who)
        try:
            return getattr(self._participant(spec), method)(*args)
        finally:
            self._trim(spec.name)

    def _trim(self, current: str) -> None:
        """Evict the least recently served until at most ``cache_size`` are set up and, with
        ``cache_mb``, their data and model fit it; ``current`` and those with a task
        running always stay (so the cache may hold more while many run). One holding a
        sealed update is never evicted: that update exists only in memory until its cohort
        is masked (at most ``MAX_SEALED`` per participant)."""
        with self._lock:
            over = len(self._served) - self.cache_size
            if over <= 0 and self.cache_bytes is None:  # the common case, checked per task
                return
            sizes = {name: p.footprint_bytes() for name, p in self._served.items()}
            total = sum(sizes.values())
            for name, p in list(self._served.items()):
                if over <= 0 and (self.cache_bytes is None or total <= self.cache_bytes):
                    break
                if name != current and name not in self._busy and not len(p.sealed):
                    del self._served[name]  # its private state is already on disk
                    total, over = total - sizes[name], over - 1

    def describe(self, who: Who, together: bool = False) -> dict[str, Any]:
        """Set up and describe; the run's fitted preprocessing, if any, is in the spec (a
        participant first served for its statistics started without it). With more
        participants than it keeps set up, the worker would evict most of those it set up
        here: it describes them lightly (:meth:`Participant.describe`). ``together``: its
        tasks will train together, so batched training warms up too (``cohort.warm_up``)."""
        spec = self._spec(who)
        with self._lock:
            lightly = len(self._specs) > self.cache_size
        with self._baton:  # in turn with the tasks: setting up seeds torch's global generator
            info = self._serve(spec, "describe", lightly)
            with self._lock:
                participant = self._served.get(spec.name)
            if together and participant is not None and participant.footprint_bytes():
                from actors.participant.cohort import warm_up

                warm_up(participant.local)
            return info

    def describe_each(self, specs: list[ParticipantSpec], together: bool = False) -> list[dict[str, Any] | CouldNotStart]:
        """Register and describe each of these in one call: start-up costs a round trip per
        worker, not per participant (a thousand calls cost the driver seconds). One that
        cannot set up answers why in its place; the others are still described."""
        self.register(specs)
        out: list[dict[str, Any] | CouldNotStart] = []
        for spec in specs:
            try:
                out.append(self.describe(spec, together))
            except DataError as exc:  # names the participant and its data already
                out.append(CouldNotStart(str(exc)))
            except Exception as exc:  # noqa: BLE001 - every other participant still starts
                first = (str(exc).splitlines() or [""])[0]
                out.append(CouldNotStart(f"participant {spec.name}: could not start: {type(exc).__name__}: {first}"))
        return out

    def initial_parameters(self, who: Who) -> np.ndarray:
        with self._baton:
            return self._serve(who, "initial_parameters")

    def probe_batching(self, whos: list[Who], tasks: int | None, together: bool = True) -> Probe:
        """Copies of these participants trained together against one at a time, timed
        (``batched: auto``: :mod:`~actors.participant.batching_probe`)."""
        from actors.participant.batching_probe import probe
        with contextlib.ExitStack() as running:
            served = [running.enter_context(self._running(self._spec(who))) for who in whos]
            with self._baton:
                return probe([p.local for p in served], tasks, together)

    def train(self, who: Who, state: GlobalState, instructions: Instructions,
              cohort: tuple[int, int] | None = None) -> Update:
        """One task; ``cohort``: ``(id, size)`` of the batch it was sent with (:mod:`~actors.participant.cohort`)."""
        return self._train(who, state, instructions, self._join(cohort))

    def _train(self, who: Who, state: GlobalState, instructions: Instructions, together: Cohort) -> Update:
        with together.member(), self._running(self._spec(who)) as p, together.baton:
            local = p.local  # set up under the baton: setting up seeds torch's global generator
            local.trainer, p.idle, p.pause = together.trainer(), together.away, _pause
            try:
                return p.train(state, instructions)
            finally:
                local.trainer, p.idle, p.pause = None, contextlib.nullcontext, time.sleep

    def train_round(self, tasks: list[tuple[Who, Instructions]], state: GlobalState, clip_norm: float | None,
                    cohort: tuple[int, int] | None = None) -> tuple[Update | BaseException | WorkerSum, ...]:
        """This worker's tasks of one sync round in one call (:mod:`actors.participant.summing`),
        each in a thread of its own as if it were its own call: each task's update (its payload
        summed here) or exception, in order, then the sum. With a ``cohort`` they are one
        (``Cohort.of_call``). Tasks that neither train together nor wait (``never_waits``) run
        one after another in this thread: threads would overlap nothing and contend for the GIL."""
        from actors.participant.cohort import Cohort
        together = None if cohort is None else Cohort.of_call(len(tasks), self._baton)

        def outcome(who: Who, instructions: Instructions) -> Update | BaseException:
            try:
                return self._train(who, state, instructions, together or self._join(None))
            except Exception as exc:  # noqa: BLE001 - the driver tells the kinds apart, as for a call's
                return exc

        if together is None and all(self._never_waits(who, instructions) for who, instructions in tasks):
            outcomes = [outcome(who, instructions) for who, instructions in tasks]
        else:
            outcomes = [f.result() for f in [self._threads.submit(outcome, *task) for task in tasks]]
        return (*outcomes, sum_checked(outcomes, state.layout, clip_norm))

    def _never_waits(self, who: Who, instructions: Instructions) -> bool:
        spec = who if isinstance(who, ParticipantSpec) else self._specs.get(who)  # unknown: fails at once
        return spec is None or never_waits(spec, instructions.simulated_seconds is not None)

    @functools.cached_property
    def _threads(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(TASK_THREADS_MAX, thread_name_prefix="fedray-task")

    @contextlib.contextmanager
    def _running(self, spec: ParticipantSpec) -> Iterator[Participant]:
        """The participant, kept in the cache while its task runs. One whose abandoned task
        still runs here (it stops at its next wait) gets :data:`ABANDON_GRACE_S` to end,
        then fails rather than run twice at the same time."""
        with self._ended:
            if not self._ended.wait_for(lambda: spec.name not in self._busy, ABANDON_GRACE_S):
                raise ParticipantBusy(f"participant {spec.name}: its previous task, abandoned after "
                                      "task_timeout_s, is still running in this pool worker")
            self._busy.add(spec.name)
        try:
            yield self._participant(spec)
        finally:
            with self._ended:
                self._busy.discard(spec.name)
                self._ended.notify_all()
            self._trim(spec.name)

    def _join(self, cohort: tuple[int, int] | None) -> Cohort:
        """The task's cohort: the batch's (made by its first member to arrive), or one of
        its own. A member arriving after its cohort gave up waiting trains alone."""
        from actors.participant.cohort import Cohort

        with self._lock:
            if cohort is not None:
                key, size = cohort
                together = self._cohorts.setdefault(key, Cohort(size, self._baton, _cancelled))
                joined = together.arrive()
                if together.expected <= 0:
                    del self._cohorts[key]
                if joined:
                    return together
        alone = Cohort(1, self._baton, _cancelled)
        alone.arrive()
        return alone

    def public_key(self, who: Who) -> bytes:
        return self._serve(who, "public_key")

    def masked_update(self, who: Who, cohort_id: int, peers: dict[str, bytes], weights: dict[int, float],
                      clip_norm: float | None) -> np.ndarray:
        return self._serve(who, "masked_update", cohort_id, peers, weights, clip_norm)

    def unmask_dropped(self, who: Who, cohort_id: int, dropped: list[str], peers: dict[str, bytes],
                       size: int) -> np.ndarray:
        return self._serve(who, "unmask_dropped", cohort_id, dropped, peers, size)

    def table_schema(self, who: Who) -> dict[str, Any]:
        with self._baton:
            return self._serve(who, "table_schema")

    def table_statistics(self, who: Who, numeric: list[str], scales: list[float] | None,
                         means: list[float] | None) -> np.ndarray:
        with self._baton:
            return self._serve(who, "table_statistics", numeric, scales, means)

    def masked_table_statistics(self, who: Who, numeric: list[str], scales: list[float] | None,
                                means: list[float] | None, cohort_id: int, peers: dict[str, bytes]) -> np.ndarray:
        return self._serve(who, "masked_table_statistics", numeric, scales, means, cohort_id, peers)

    def restore_private_state(self, who: Who, rollback: private_state.Rollback) -> None:
        return self._serve(who, "restore_private_state", rollback)

    def discard_private_state(self, specs: list[ParticipantSpec]) -> None:
        """The run is over and cannot be resumed: delete these participants' private state
        (their specs, not names: a worker restarted since needs each one's state directory)."""
        for spec in specs:
            with self._lock:
                self._served.pop(spec.name, None)
            private_state.discard(spec.state_dir)

    def reset(self) -> bool:
        """Forget every participant (a run ended; the driver may serve another run's with
        this process). False when a task still runs after :data:`ABANDON_GRACE_S`: this
        worker is not fit to serve another run."""
        with self._ended:
            if not self._ended.wait_for(lambda: not self._busy, ABANDON_GRACE_S):
                return False
            self._specs.clear()
            self._served.clear()
            self._cohorts.clear()
            self._hosted.clear()
        return True

    def host_call(self, key: str, build: Callable[[], Any], method: str, *args: Any) -> Any:
        """``method(*args)`` of an object this worker builds with ``build()`` on the first
        call naming ``key`` and keeps until :meth:`reset`. The driver's evaluator of the
        global model lives here, so a driver on pool workers never imports torch. Runs in
        its own task thread, beside training (no baton: it trains nothing)."""
        with self._lock:
            target = self._hosted.get(key)
        if target is None:
            built = build()  # outside the lock: it loads data and a model
            with self._lock:
                target = self._hosted.setdefault(key, built)
        return getattr(target, method)(*args)

    def lease(self, driver: str | None) -> bool:
        """Take this worker for ``driver`` (True), unless another driver holds it; None gives
        it back. A worker that outlives its driver (``fedray up``) is found by any driver
        that joins the cluster, and two of them must never serve runs on it at once."""
        with self._lock:
            if driver is not None and self._holder not in (None, driver):
                return False
            self._holder = driver
            return True

    def cached(self) -> list[str]:
        """Names of the participants set up in this worker, least recently served first."""
        return list(self._served)

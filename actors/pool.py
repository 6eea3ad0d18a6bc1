"""A pool worker: one Ray actor that serves many participants, one task at a time.

Dedicated hosting gives every participant its own process; that is right for a hospital
pinned to its node, and too heavy for a simulation of hundreds of participants on a
laptop, where each process costs its own torch import and memory. A pool worker keeps a
bounded cache of :class:`~actors.participant.Participant` objects. Each loads its own data
inside this worker the first time it is served and keeps its private state (client state,
simulator random state, DP-SGD budget) in its own state directory after every task, so a
participant evicted from the cache, or served after the worker restarted, goes on from
where it was. The driver never reads that state; it only names the participant.

The methods mirror the Participant's, with the participant's spec as the last argument.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from actors import private_state
from actors.cohort import Cohort
from actors.data import DataError
from actors.participant import Participant
from actors.spec import ParticipantSpec
from strategies.types import GlobalState, Instructions, Update

DEFAULT_CACHE = 64
"""Participants a worker keeps set up (data and model in memory) at the most."""


class PoolWorker:
    """Serves any participant it is given; keeps the ``cache_size`` most recent set up.

    >>> worker = PoolWorker(cache_size=2)
    >>> worker.cached()
    []
    """

    def __init__(self, cache_size: int = DEFAULT_CACHE, cache_mb: float | None = None) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.cache_size = cache_size
        self.cache_bytes = None if cache_mb is None else cache_mb * 2**20
        self._served: OrderedDict[str, Participant] = OrderedDict()
        self._lock = threading.Lock()  # secure aggregation's masking thread looks up too

    def _participant(self, spec: ParticipantSpec) -> Participant:
        """The participant, from the cache or new (it sets itself up on first use); the
        least recent are evicted first, so no more than ``cache_size`` are ever set up."""
        with self._lock:
            participant = self._served.pop(spec.name, None)
            if participant is None:
                participant = Participant(spec)
            self._served[spec.name] = participant
        self._trim(spec.name)
        return participant

    def _serve(self, spec: ParticipantSpec, method: str, *args: Any) -> Any:
        """Every call goes through here: the participant's ``method``, then a second trim,
        because only once it is set up does its size count against ``cache_mb``."""
        try:
            return getattr(self._participant(spec), method)(*args)
        finally:
            self._trim(spec.name)

    def _trim(self, current: str) -> None:
        """Evict the least recently served until at most ``cache_size`` are set up and, with
        ``cache_mb``, their data and model fit it; ``current`` always stays. One holding a
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
                if name != current and not len(p.sealed):
                    del self._served[name]  # its private state is already on disk
                    total, over = total - sizes[name], over - 1

    def describe(self, spec: ParticipantSpec) -> dict[str, Any]:
        """Set up and describe; the run's fitted preprocessing, if any, is in the spec (a
        participant first served for its statistics started without it)."""
        return self._serve(spec, "describe", spec.transform)

    def describe_all(self, specs: list[ParticipantSpec]) -> list[dict[str, Any] | DataError]:
        """Describe every participant this worker serves in one call (start-up costs one
        round trip per worker, not per participant); a participant whose data cannot be
        used comes back as its ``DataError``, the others still start."""
        out: list[dict[str, Any] | DataError] = []
        for spec in specs:
            try:
                out.append(self.describe(spec))
            except DataError as exc:
                with self._lock:
                    self._served.pop(spec.name, None)
                out.append(exc)
        return out

    def initial_parameters(self, spec: ParticipantSpec) -> np.ndarray:
        return self._serve(spec, "initial_parameters")

    def train(self, state: GlobalState, instructions: Instructions, spec: ParticipantSpec) -> Update:
        return self._serve(spec, "train", state, instructions)

    def train_batch(self, state: GlobalState, instructions: list[Instructions], specs: list[ParticipantSpec]
                    ) -> tuple[Update | Exception, ...]:
        """One task for each of several participants, their local training run together
        where it batches (:mod:`actors.cohort`). One result per task, in order: its update,
        or the exception it ended with, which the driver treats as that task's outcome
        (called with ``num_returns=len(specs)``, so each task has its own object ref)."""
        participants = [self._participant(spec) for spec in specs]  # held here even if trimmed
        results: list[Update | Exception | None] = [None] * len(specs)
        ready = []
        for i, (p, instr) in enumerate(zip(participants, instructions, strict=True)):
            try:  # one at a time: setting up seeds torch's global generator
                p.adopt(instr.transform)
                p.local  # noqa: B018 - sets it up
                ready.append(i)
            except Exception as exc:  # noqa: BLE001 - that task's outcome (a DataError, say)
                results[i] = exc
        cohort = Cohort(len(ready))

        def task(i: int) -> None:
            p = participants[i]
            with cohort.turn():
                p.local.trainer, p.idle = cohort.trainer(), cohort.idle
                try:
                    results[i] = p.train(state, instructions[i])
                except Exception as exc:  # noqa: BLE001 - that task's outcome
                    results[i] = exc
                finally:
                    p.local.trainer, p.idle = None, contextlib.nullcontext

        threads = [threading.Thread(target=task, args=(i,)) for i in ready]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self._trim(specs[-1].name)
        return tuple(r if r is not None else RuntimeError("task produced no result") for r in results)

    def public_key(self, spec: ParticipantSpec) -> bytes:
        return self._serve(spec, "public_key")

    def masked_update(self, cohort_id: int, peers: dict[str, bytes], weights: dict[int, float],
                      clip_norm: float | None, spec: ParticipantSpec) -> np.ndarray:
        return self._serve(spec, "masked_update", cohort_id, peers, weights, clip_norm)

    def unmask_dropped(self, cohort_id: int, dropped: list[str], peers: dict[str, bytes], size: int,
                       spec: ParticipantSpec) -> np.ndarray:
        return self._serve(spec, "unmask_dropped", cohort_id, dropped, peers, size)

    def table_schema(self, spec: ParticipantSpec) -> dict[str, Any]:
        return self._serve(spec, "table_schema")

    def table_statistics(self, numeric: list[str], scales: list[float] | None, means: list[float] | None,
                         spec: ParticipantSpec) -> np.ndarray:
        return self._serve(spec, "table_statistics", numeric, scales, means)

    def masked_table_statistics(self, numeric: list[str], scales: list[float] | None, means: list[float] | None,
                                cohort_id: int, peers: dict[str, bytes], spec: ParticipantSpec) -> np.ndarray:
        return self._serve(spec, "masked_table_statistics", numeric, scales, means, cohort_id, peers)

    def restore_private_state(self, rollback: private_state.Rollback, spec: ParticipantSpec) -> None:
        return self._serve(spec, "restore_private_state", rollback)

    def discard_private_state(self, specs: list[ParticipantSpec]) -> None:
        """The run is over and cannot be resumed: delete these participants' private state."""
        for spec in specs:
            with self._lock:
                self._served.pop(spec.name, None)
            private_state.discard(spec.state_dir)

    def cached(self) -> list[str]:
        """Names of the participants set up in this worker, least recently served first."""
        return list(self._served)

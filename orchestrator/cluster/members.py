"""The driver's view of one participant (:class:`Member`), of a finished task
(:class:`Arrival`), and the words a Ray error is reported in (:func:`error_message`);
:mod:`orchestrator.cluster.participants` says how each outcome is told apart."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from actors.participant.pool import NotRegistered
from actors.spec.participant import ParticipantSpec
from actors.spec.training import TRAINED_TOGETHER
from orchestrator.loop.schedules import Task
from strategies.types import Update

RESTART_BACKOFF_S = 1.0
"""How long to leave a participant alone while Ray restarts its actor."""


class RunError(RuntimeError):
    """The run cannot go on (no participants left, none could start); the message says why."""


@dataclass
class Member:
    """The driver's view of one participant."""

    name: str
    group: str
    index: int
    handle: Any
    spec: ParticipantSpec
    max_restarts: int
    busy: bool = False
    lost: bool = False
    restarting: bool = False
    failures: int = 0
    tasks: int = 0
    retry_at: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    pooled: bool = False
    """Served by a pool worker: calls name the participant (:meth:`address`)."""
    registered: bool = False
    """Pooled: its worker has its current spec, so calls send only its name. Assigning
    ``spec`` (the fitted preprocessing) clears it, and so does :func:`worker_restarted`."""
    batches: bool = False
    """Pooled: its worker trains the tasks it has at once together (:mod:`~orchestrator.cluster.batching`)."""
    saved_task: int | None = None
    """The last task after which it reported saving its private state."""
    rollback_before: int = 0
    """Where a resume from the latest checkpoint rolls its private state back to
    (:class:`actors.participant.private_state.Rollback`)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "spec":  # a new spec reaches the pool worker with the next call
            object.__setattr__(self, "registered", False)
        object.__setattr__(self, name, value)

    def address(self) -> str | ParticipantSpec:
        """How a call names this participant on its pool worker: the spec, which registers
        it there, until the worker has it; its name after that."""
        if self.registered:
            return self.name
        self.registered = True
        return self.spec

    def call(self, method: str, *args: Any, **options: Any) -> ray.ObjectRef:
        """``handle.method.options(**options).remote(*args)``, addressed to this participant
        on a pool worker (which takes it as the first argument)."""
        lead = (self.address(),) if self.pooled else ()
        bound = getattr(self.handle, method)
        return (bound.options(**options) if options else bound).remote(*lead, *args)

    def where(self, task: Task, version: int) -> dict[str, Any]:
        """The history fields every event about one of its tasks carries."""
        return {"participant": self.name, "group": self.group, "task_id": task.task_id,
                "version": version, "base_version": task.base_version}


def worker_restarted(members: list[Member], failed: Member, exc: BaseException) -> None:
    """After ``exc`` ended a call to ``failed``: if its pool worker died, is restarting or
    lost its registrations (:class:`NotRegistered`), every participant it serves sends its
    spec again with its next call."""
    if failed.pooled and isinstance(exc, ray.exceptions.RayActorError | NotRegistered):
        for member in members:
            if member.handle is failed.handle:
                member.registered = False


def by_worker(members: list[Member]) -> list[list[Member]]:
    """The pooled ones among ``members``, grouped by the pool worker that serves them (in
    the order first met), for calls made once per worker."""
    served: dict[int, list[Member]] = {}
    for member in members:
        if member.pooled:
            served.setdefault(id(member.handle), []).append(member)
    return list(served.values())


@dataclass
class Arrival:
    """A finished task: its update, or None when it ended in an event already recorded."""

    task: Task
    member: Member
    update: Update | None

    def fields(self, version: int, in_flight: int) -> dict[str, Any]:
        """The history fields of this arrival's update (or rejection, or late drop)."""
        u = self.update
        assert u is not None
        out = self.member.where(self.task, version) | {
            "in_flight": in_flight, "staleness": version - u.base_version,
            "num_examples": u.num_examples, "bytes": u.nbytes,
            "train_seconds": u.train_seconds, "simulated_seconds": u.simulated_seconds,
            "loss": u.metrics.get("train_loss"), "samples": u.metrics.get("samples"),
            "batched": u.metrics.get(TRAINED_TOGETHER)}
        if "dp_sgd_epsilon" in u.metrics:  # local DP-SGD: the participant's budget spent so far
            out["epsilon"] = u.metrics["dp_sgd_epsilon"]
        return out


def task_seed(run_seed: int, index: int, tasks_done: int) -> int:
    """Per-task seed from the run seed, the participant's index and its task count: the
    same run gives every task the same seed, whatever the timing.

    >>> task_seed(0, 1, 2) == task_seed(0, 1, 2) != task_seed(0, 1, 3)
    True
    """
    return int(np.random.SeedSequence([run_seed, index, tasks_done]).generate_state(1)[0])


def error_message(exc: BaseException) -> str:
    """The human part of a Ray error: the participant's own exception and its message,
    or the first line of Ray's explanation."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None:
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not isinstance(exc, ray.exceptions.RayError):  # one the driver makes (a pool task's timeout)
        return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return lines[0] if lines else type(exc).__name__

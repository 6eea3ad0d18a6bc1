"""Starting the participants: each sets itself up and says what it holds, once.

A dedicated actor is asked in a call of its own. A pool worker is asked once for all the
participants it serves (``PoolWorker.describe_each``): a thousand participants cost two
round trips, not a thousand. A participant that cannot set up (a bad data path, its own
loader failing) is named with its reason and the run starts without it.
"""

from __future__ import annotations

import time

import ray

from actors.data.tables import DataError
from actors.participant.pool import CouldNotStart
from orchestrator.cluster.members import RESTART_BACKOFF_S, Member, by_worker, error_message

START_TIMEOUT_S = 300.0
"""How long participants may take to start (import torch, load data) before we give up."""


def describe_all(members: list[Member], together: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Ask every participant in ``members`` to set up and describe itself (``Member.info``);
    returns ``(name, why)`` for each that could not, and marks it lost. ``together``: the
    groups whose pool workers train their tasks together (they warm that up as well)."""
    dedicated = {member.call("describe"): member for member in members if not member.pooled}
    return _await_start(dedicated) + _describe_pooled(members, together)


def _describe_pooled(members: list[Member], together: frozenset[str]) -> list[tuple[str, str]]:
    """One ``describe_each`` call per pool worker. A worker that dies there (a crash, an
    OOM kill) is restarted by Ray and asked again one participant at a time, so a
    participant that kills its process does not keep the others from starting."""
    calls = {group[0].handle.describe_each.remote([m.spec for m in group], group[0].group in together): group
             for group in by_worker(members)}
    if not calls:
        return []
    ready, late = ray.wait(list(calls), num_returns=len(calls), timeout=START_TIMEOUT_S)
    errors, again = [], []
    for ref in ready:
        try:
            answers = ray.get(ref)
        except ray.exceptions.RayError:
            again += calls[ref]
            continue
        for member, answer in zip(calls[ref], answers, strict=True):
            member.registered = True
            if isinstance(answer, CouldNotStart):
                member.lost = True
                errors.append((member.name, answer.message))
            else:
                member.info = answer
    errors += [_did_not_start(member) for ref in late for member in calls[ref]]
    deadline = time.perf_counter() + START_TIMEOUT_S
    for member in again:  # one at a time: a participant that kills its worker takes only itself
        errors += _describe_alone(member, deadline)
    for member in again:  # its worker may have restarted since: send each spec again
        member.registered = False
    return errors


def _describe_alone(member: Member, deadline: float) -> list[tuple[str, str]]:
    """One pooled participant's description after its worker died. While Ray restarts
    the worker every call fails at once, so a cheap call is sent until one answers;
    the describe is then sent once, and whatever ends it is this participant's."""
    while time.perf_counter() < deadline:
        try:
            ray.get(member.handle.cached.remote(), timeout=max(0.0, deadline - time.perf_counter()))
            break
        except ray.exceptions.ActorUnavailableError:
            time.sleep(RESTART_BACKOFF_S / 4)
        except ray.exceptions.RayError:
            break  # dead for good, or no answer in time: the describe below says so
    member.registered = False  # a restarted worker has lost every registration
    return _await_start({member.call("describe"): member}, max(0.0, deadline - time.perf_counter()))


def _await_start(pending: dict[ray.ObjectRef, Member],
                 timeout: float = START_TIMEOUT_S) -> list[tuple[str, str]]:
    """Each participant's description, or why it could not start (a bad data path
    comes back as its own ``DataError``, naming it and the path)."""
    if not pending:
        return []
    # one wait for them all: a wait per arrival over the rest was quadratic (1,000
    # participants: half a million checks)
    ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout)
    errors = []
    for ref in ready:
        member = pending[ref]
        try:
            member.info = ray.get(ref)
        except DataError as exc:
            member.lost = True
            errors.append((member.name, str(exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc)))
        except ray.exceptions.RayError as exc:  # incl. OutOfMemoryError (not a RayTaskError)
            member.lost = True
            errors.append((member.name, f"participant {member.name}: could not start: {error_message(exc)}"))
    return errors + [_did_not_start(pending[ref]) for ref in late]


def _did_not_start(member: Member) -> tuple[str, str]:
    """A participant that gave no answer within :data:`START_TIMEOUT_S`: lost, and why."""
    member.lost = True
    return member.name, f"participant {member.name}: did not start within {START_TIMEOUT_S:.0f}s"


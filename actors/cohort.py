"""Training the participants one pool worker serves together, whatever their strategy.

A strategy's client half calls ``model.train(...)`` somewhere inside its ``work`` (once
for FedAvg, twice for Ditto or FedRep). Rather than teach every client half about
batching, the pool worker runs each participant's task in its own thread and hands each
one a trainer from a :class:`Cohort`: a ``train`` call waits until every task still
running has asked to train (or finished), and then all waiting requests run at once, as
one batched computation (:func:`actors.batched.train_batched`) where they can and one at
a time where they cannot (loss terms, a frozen part, DP-SGD, differing architectures or
optimizer settings). Each update records how many participants trained together
(``batched``, through ``TorchLocalModel.trained_with``), so the history says which path ran.

The task threads take turns (:meth:`Cohort.turn`): one runs its Python at a time, the
others sleep until it waits or ends. Left to compete for the GIL, 64 threads each
doing a few milliseconds of bookkeeping took twice as long as the same work in turn.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from actors.batched import can_batch, train_batched
from strategies.client import Term, Work

TRAINED_TOGETHER = "batched"
"""Update metric: how many participants' local training ran as one computation (1: alone)."""


@dataclass
class Request:
    """One participant's ``train`` call, waiting for the cohort."""

    local: Any  # actors.local_model.TorchLocalModel
    work: Work
    terms: Sequence[Term]
    trainable: str | None
    result: dict[str, float] | None = None
    error: BaseException | None = None


class Cohort:
    """Collects the ``train`` calls of ``size`` concurrent tasks and runs them together."""

    def __init__(self, size: int) -> None:
        self.running = size
        self.waiting: list[Request] = []
        self.lock = threading.Condition()
        self.baton = threading.Lock()  # held by the one task thread that runs now

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Around a whole task: it runs only while it holds the baton, and counts as
        finished when it ends, however it ends."""
        with self.baton:
            try:
                yield
            finally:
                self.finished()

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """Around a wait inside a task (for the cohort, or a simulated task's sleep): the
        other tasks run meanwhile, and their waits overlap instead of adding up."""
        self.baton.release()
        try:
            yield
        finally:
            self.baton.acquire()

    def trainer(self) -> Callable[..., dict[str, float]]:
        """What a participant's local model calls instead of training by itself."""
        def train(local: Any, work: Work, terms: Sequence[Term], trainable: str | None) -> dict[str, float]:
            request = Request(local, work, terms, trainable)
            with self.lock:
                self.waiting.append(request)
                self._run_if_all_wait()
            with self.idle(), self.lock:
                while request.result is None and request.error is None:
                    self.lock.wait()
            if request.error is not None:
                raise request.error
            assert request.result is not None
            return request.result
        return train

    def finished(self) -> None:
        """A task ended (done or failed): the others need not wait for it any more."""
        with self.lock:
            self.running -= 1
            self._run_if_all_wait()

    def _run_if_all_wait(self) -> None:
        """Under the lock: when every running task waits, train them all and wake them."""
        if not self.waiting or len(self.waiting) < self.running:
            return
        batch, self.waiting = self.waiting, []
        try:
            run(batch)
        except Exception as exc:  # noqa: BLE001 - a bug here must fail the tasks, not hang them
            for r in batch:
                if r.result is None and r.error is None:
                    r.error = exc
        finally:
            self.lock.notify_all()


def run(batch: list[Request]) -> None:
    """Train ``batch``: the requests that can go together as one computation, the rest
    one at a time; each request gets its metrics (or its error)."""
    plain = [r for r in batch if not r.terms and r.trainable is None and r.local.dp_accountant is None]
    together = plain if len(plain) > 1 and _batchable(plain) else []
    if together:
        try:
            first = together[0].local
            metrics = train_batched(
                [r.local.model for r in together], [r.local.x for r in together], [r.local.y for r in together],
                first.spec.train, [r.work.seed for r in together], [r.work.epochs for r in together],
                [r.work.steps for r in together], loss_fn=first.loss_fn)
            for r, m in zip(together, metrics, strict=True):
                r.local.trained_with(len(together))
                r.result = m
        except Exception as exc:  # noqa: BLE001 - each waiting task fails with it, none hangs
            for r in together:
                r.error = exc
    for r in batch:
        if r.result is None and r.error is None:
            try:
                r.local.trained_with(1)
                r.result = r.local.train_now(r.work, r.terms, r.trainable)
            except Exception as exc:  # noqa: BLE001 - the participant's own task fails
                r.error = exc


def _batchable(requests: list[Request]) -> bool:
    """Same architecture, same optimizer settings, same loss, and at least one example each."""
    locals_ = [r.local for r in requests]
    if any(lm.num_examples == 0 for lm in locals_) or len({lm.spec.task for lm in locals_}) != 1:
        return False
    if any(lm.spec.train.precision != "fp32" for lm in locals_):  # batched steps run in fp32 only
        return False
    return can_batch([lm.model for lm in locals_], [lm.spec.train for lm in locals_]) is None

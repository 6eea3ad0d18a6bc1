"""Training the participants one pool worker serves together, whatever their strategy.

A strategy's client half calls ``model.train(...)`` somewhere inside its ``work`` (once
for FedAvg, twice for Ditto or FedRep). Rather than teach every client half about
batching, the pool worker runs each participant's task in its own thread and hands each
one a trainer from a :class:`Cohort`: a ``train`` call waits until every task still
running has asked to train (or finished), and then all waiting requests run at once, as
one batched computation (:func:`actors.training.batched.train_batched`) where they can and one at
a time where they cannot (loss terms, a frozen part, DP-SGD, differing architectures or
optimizer settings). Each update records how many participants trained together
(``batched``, through ``TorchLocalModel.trained_with``), so the history says which path ran.

The task threads take turns (:attr:`Cohort.baton`): one runs its Python at a time, the
others sleep until it waits or ends. Left to compete for the GIL, 64 threads each
doing a few milliseconds of bookkeeping took twice as long as the same work in turn.
The baton is the worker's, shared by every cohort it runs, so tasks of different calls
take turns too, and a task that waits (the simulator's sleeps) lets all others run.

Each task of a cohort is its own call to the worker, so its result goes back the moment
it ends, whatever its cohort-mates still do. A cohort waits for members that have not
arrived yet at most :data:`COHORT_WAIT_S` after the last one did (a member the driver
cancelled while queued never arrives); one arriving after that trains alone. The tasks of
one ``train_round`` call are a cohort too (:meth:`Cohort.of_call`): they all arrive at
once and none can be cancelled alone, so their threads sleep until they are woken
instead of looking every :data:`POLL_S`.

Out of GPU memory, a batch is split in halves and each half tried again, down to one
participant at a time: only one that cannot train even alone fails, and its error
names the cohort it was split from.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from actors.training import threads
from actors.training.batched import can_batch, train_batched
from strategies.client import Term, Work

COHORT_WAIT_S = 30.0
"""How long a cohort waits for members still to arrive after the last one did."""

POLL_S = 0.1
"""How often a waiting task looks whether the driver abandoned it or the wait is over."""


@dataclass(eq=False)
class Request:
    """One participant's ``train`` call, waiting for the cohort."""

    local: Any  # actors.training.local_model.TorchLocalModel
    work: Work
    terms: Sequence[Term]
    trainable: str | None
    result: dict[str, float] | None = None
    error: BaseException | None = None


class TaskAbandoned(RuntimeError):
    """The driver gave up on this task (``task_timeout_s``): it stops at its next wait."""


class Cohort:
    """Collects the ``train`` calls of ``size`` concurrent tasks and runs them together.

    ``baton`` is the worker's (one task computes at a time); ``cancelled`` tells a task
    thread whether the driver abandoned its task.
    """

    def __init__(self, size: int, baton: threading.Lock | None = None,
                 cancelled: Callable[[], bool] | None = None) -> None:
        self.expected = size  # members that have not arrived yet
        self.running = 0  # arrived, not finished, not away
        self.waiting: list[Request] = []
        self.lock = threading.Condition()
        self.baton = baton or threading.Lock()  # held by the one task thread that runs now
        self.cancelled = cancelled  # None: no member can be cancelled alone
        self.last_arrival = time.monotonic()

    @classmethod
    def of_call(cls, size: int, baton: threading.Lock) -> Cohort:
        """The ``size`` tasks of one call, arrived together. Every member is a thread of
        that call, so the batch never waits on anything outside it, and a waiting member
        sleeps until it is woken: 63 threads looking every :data:`POLL_S` made a round of
        64 small participants on 2 cores ~20% slower."""
        together = cls(0, baton)
        together.running = size
        return together

    def arrive(self) -> bool:
        """A member's task starts; False when the cohort stopped waiting for it (it trains alone)."""
        with self.lock:
            if self.expected <= 0:
                return False
            self.expected -= 1
            self.running += 1
            self.last_arrival = time.monotonic()
            return True

    @contextlib.contextmanager
    def member(self) -> Iterator[None]:
        """Around a whole task, after :meth:`arrive` (it computes only while it holds
        ``baton``): it counts as finished when it ends, however it ends."""
        try:
            yield
        finally:
            self.finished()

    @contextlib.contextmanager
    def _yield(self) -> Iterator[None]:
        """Let the other tasks run while this one waits."""
        self.baton.release()
        try:
            yield
        finally:
            self.baton.acquire()

    @contextlib.contextmanager
    def away(self) -> Iterator[None]:
        """Around a simulated task's sleep: the other tasks run meanwhile, their waits
        overlap instead of adding up, and their next training does not wait for this one."""
        with self.lock:
            self.running -= 1
            self._run_if_all_wait()
        try:
            with self._yield():
                yield
        finally:
            with self.lock:
                self.running += 1

    def trainer(self) -> Callable[..., dict[str, float]]:
        """What a participant's local model calls instead of training by itself."""
        def train(local: Any, work: Work, terms: Sequence[Term], trainable: str | None) -> dict[str, float]:
            request = Request(local, work, terms, trainable)
            with self.lock:
                self.waiting.append(request)
                self._run_if_all_wait()
            with self._yield(), self.lock:
                while request.result is None and request.error is None:
                    self.lock.wait(POLL_S if self.cancelled is not None or self.expected > 0 else None)
                    if request in self.waiting and self.cancelled is not None and self.cancelled():
                        self.waiting.remove(request)
                        raise TaskAbandoned("the driver abandoned this task while it waited for its cohort")
                    if self.expected > 0 and time.monotonic() - self.last_arrival > COHORT_WAIT_S:
                        self.expected = 0  # the missing members train alone if they ever come
                        self._run_if_all_wait()
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
        """Under the lock: when every running task waits and no member is still to
        come, train them all and wake them."""
        if not self.waiting or len(self.waiting) < self.running or self.expected > 0:
            return
        batch, self.waiting = self.waiting, []
        try:
            threads.on_compute_thread(run, batch)
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
    if len(plain) > 1 and _batchable(plain):
        _together(plain, plain)
    for r in batch:
        if r.result is None and r.error is None:
            _alone(r)


def _together(requests: list[Request], cohort: list[Request]) -> None:
    """Train ``requests`` as one computation; out of GPU memory, each half again (the
    models are written back only at the end, so a failed attempt leaves them as they
    were), down to one at a time. Other errors fail every request of the batch."""
    if len(requests) == 1:
        _alone(requests[0], cohort)
        return
    try:
        first = requests[0].local
        threads.use(first.spec.num_threads)  # (the thread may have trained one alone on fewer)
        metrics = train_batched(
            [r.local.model for r in requests], [r.local.x for r in requests], [r.local.y for r in requests],
            first.spec.train, [r.work.seed for r in requests], [r.work.epochs for r in requests],
            [r.work.steps for r in requests], loss_fn=first.loss_fn)
    except torch.OutOfMemoryError:
        _free_gpu_cache()
        half = len(requests) // 2
        _together(requests[:half], cohort)
        _together(requests[half:], cohort)
        return
    except Exception as exc:  # noqa: BLE001 - each waiting task fails with it, none hangs
        for r in requests:
            r.error = exc
        return
    for r, m in zip(requests, metrics, strict=True):
        r.local.trained_with(len(requests))
        r.result = m


def _alone(r: Request, cohort: list[Request] | None = None) -> None:
    """Train one request by itself; ``cohort``: the batch it was split from after that
    ran out of GPU memory, named in its error if it runs out alone too."""
    try:
        r.local.trained_with(1)
        r.result = r.local.train_now(r.work, r.terms, r.trainable)
    except torch.OutOfMemoryError as exc:
        if cohort is not None:  # (actors.participant.gpu_memory.describe_oom says so)
            exc.cohort = [c.local.spec.name for c in cohort]  # type: ignore[attr-defined]
        r.error = exc
    except Exception as exc:  # noqa: BLE001 - the participant's own task fails
        r.error = exc


_WARMED: set[tuple] = set()


def warm_up(local: Any) -> None:
    """Train two copies of ``local``'s model together on two rows, then drop them: the
    first :func:`train_batched` call in a process sets up vmap (~20 ms on a 2-core
    laptop, more on a GPU), and a pool worker that batches makes it at start-up, beside
    the serial warm-up, instead of in its first round. Once per architecture and device per
    process; nothing of the participant changes (its model is copied, no global random
    generator is drawn from)."""
    key = (local.device.type, local.layout)
    if key in _WARMED or local.num_examples == 0:
        return
    twins = [copy.deepcopy(local.model) for _ in range(2)]
    if can_batch(twins, [local.spec.train] * 2) is None:
        threads.on_compute_thread(train_batched, twins, [local.x[:2]] * 2, [local.y[:2]] * 2, local.spec.train,
                                  [0, 1], 1, 1, loss_fn=local.loss_fn)
    _WARMED.add(key)


def _free_gpu_cache() -> None:
    """Hand the failed attempt's cached blocks back before the smaller tries."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _batchable(requests: list[Request]) -> bool:
    return why_apart([r.local for r in requests]) is None


def why_apart(locals_: Sequence[Any]) -> str | None:
    """Why these participants' plain training cannot run as one computation, or None: it
    needs at least one example each, fp32, one task (so one loss), and the same
    architecture and optimizer settings (``can_batch``)."""
    if any(lm.num_examples == 0 for lm in locals_):
        return "a participant holds no training examples"
    if any(lm.spec.train.precision != "fp32" for lm in locals_):
        return "batched steps run in fp32 only"
    if len({lm.spec.task for lm in locals_}) != 1:
        return "the participants' tasks differ"
    return can_batch([lm.model for lm in locals_], [lm.spec.train for lm in locals_])

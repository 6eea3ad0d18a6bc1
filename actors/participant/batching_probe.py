"""Whether a pool worker trains its participants faster together or one at a time, measured.

Batching wins where one participant's step is too small to keep the hardware busy (small
models on a GPU, and often on a CPU too) and loses where each step already fills it (large
models on a few cores), with everything between depending on the machine, the thread the
work runs in and the participants' data. So ``batched: auto`` does not guess from the
device: a pool worker trains copies of the participants it expects to train at once, on
their own data and with their own local work (at most :data:`MAX_STEPS` steps each), both
ways, where each would run: one at a time in a task thread, together on the worker's
compute thread (:func:`actors.training.threads.on_compute_thread`). Scaled to one task, together must beat one at a time
by :data:`MARGIN` after paying :data:`HANDOVER_S` per task, which this loop does not see.
With more than one torch thread asked for, one at a time is also timed on one thread, and
kept on one (:mod:`actors.training.threads`) where that was faster by :data:`MARGIN`.

The copies are thrown away: the participants' models, data, optimizer state and torch's
global generators are as they were (training seeds its own generators,
:func:`actors.training.loops.task_rng`). This module imports torch only when it measures:
the driver reads its :class:`Probe`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MARGIN = 0.9
"""A task trained together must take at most this share of its time alone."""

HANDOVER_S = 0.3e-3
"""What training together adds to each task in a pool worker beyond the batched step: its
own thread and two hand-overs of the worker's baton. In one process on the 2-core laptop,
64 small tasks spent 23-35 ms of a batched round before and after the batched step, about
0.2-0.3 ms a task more than the same tasks run one after another."""

MAX_STEPS = 16
"""Steps each copy takes in a measurement at most (its task's own, if fewer)."""

MAX_COPIES = 32
"""A worker expecting more tasks at once measures this many (batching gains with more of
them, so its verdict holds for more)."""

FIRST_BATCHED_S = 0.02
"""The first batched step in a process, which a measurement takes untimed before timing
together: ~20 ms on the 2-core laptop for small MLPs (vmap's own first-call set-up)."""

COST_SHARE = 0.25
"""A worker measures only where the measurement costs at most this share of the training
its tasks would do alone over the whole run; it costs about four more passes like the
first one timed alone, and :data:`FIRST_BATCHED_S` where its participants could train
together. Where batching won on the 2-core laptop it saved half of each
task's time or more (64 small MLPs: 2.4 -> 1.1 ms a task), repaying such a measurement
twice over; on shorter runs the measurement itself would cost more than batching saves."""


@dataclass(frozen=True)
class Probe:
    """One worker's measurement: ``copies`` participants' models, ``steps`` steps each on
    average (their tasks take ``task_steps``), trained together in ``together_s`` and one
    after another in ``alone_s`` (the faster of two tries each). ``why_not``: why they do
    not train together (then ``together_s`` is NaN, and ``alone_s`` too where nothing was
    timed: the run holds too little training to be worth it, or no thread count to try)."""

    copies: int
    steps: float = 0.0
    together_s: float = math.nan
    alone_s: float = math.nan
    task_steps: float = 1.0
    why_not: str | None = None
    alone_threads: int = 0
    """1 when one at a time ran faster on one torch thread than on the group's (and was timed so); else 0."""

    def per_task(self) -> tuple[float, float]:
        """Seconds one task takes together (hand-over included) and alone."""
        scale = self.task_steps / (self.steps * self.copies)
        return self.together_s * scale + HANDOVER_S, self.alone_s * scale

    @property
    def batches(self) -> bool:
        if self.why_not is not None:
            return False
        together, alone = self.per_task()
        return together <= MARGIN * alone

    def line(self) -> str:
        """What was measured and chosen, for the history and the log."""
        one = " (on 1 torch thread, faster than the group's)" if self.alone_threads else ""
        if self.why_not is not None:
            if math.isnan(self.alone_s):
                return f"one at a time: {self.why_not}"
            _, alone = self.per_task()
            return (f"one at a time ({self.why_not}): {self.copies} participants' models, {self.steps:.3g} steps "
                    f"each, took {self.alone_s * 1000:.1f} ms{one}; a task ({self.task_steps:.3g} steps) "
                    f"{alone * 1000:.2f} ms")
        together, alone = self.per_task()
        verdict = "together" if self.batches else "one at a time"
        return (f"{verdict}: {self.copies} participants' models, {self.steps:.3g} steps each, took "
                f"{self.together_s * 1000:.1f} ms together and {self.alone_s * 1000:.1f} ms one at a time{one}; a task "
                f"({self.task_steps:.3g} steps) {together * 1000:.2f} ms together with the hand-over, "
                f"{alone * 1000:.2f} ms alone")


def probe(locals_: Sequence[Any], tasks: int | None = None, together: bool = True) -> Probe:
    """Time these participants' models (``TorchLocalModel``) trained together (unless
    ``together`` is False: their group does not batch by measurement) and one after another,
    and, where their group asks for several torch threads, one after another on one.
    ``tasks``: the worker's tasks over the run (None: no bound), for :data:`COST_SHARE`."""
    from actors.participant.cohort import why_apart
    from actors.training import threads
    from actors.training.batched import train_batched
    from actors.training.loops import train_locally

    specs = [local.spec.train for local in locals_]
    copies, asked = len(locals_), max(1, locals_[0].spec.num_threads)
    if any(local.num_examples == 0 for local in locals_):
        return Probe(copies, why_not="a participant holds no training examples")
    if any(local.dp_accountant is not None or spec.precision != "fp32" for local, spec in zip(locals_, specs)):
        return Probe(copies, why_not="DP-SGD and reduced precision train one at a time")
    why = ("batched: false" if not together else "fewer than two participants train at once"
           if copies < 2 else why_apart(locals_))  # as the worker's cohorts decide (cohort.py)
    if why is not None and asked == 1:
        return Probe(copies, why_not=why)
    models = [copy.deepcopy(local.model) for local in locals_]
    full = [spec.local_steps or spec.local_epochs * math.ceil(local.num_examples / spec.batch_size)
            for local, spec in zip(locals_, specs)]
    steps = [min(n, MAX_STEPS) for n in full]
    seeds, loss_fn = list(range(copies)), locals_[0].loss_fn

    def both() -> None:  # where a worker's batched steps run, on the group's threads
        threads.on_compute_thread(lambda: (threads.use(asked), train_batched(
            models, [local.x for local in locals_], [local.y for local in locals_], specs[0], seeds,
            [spec.local_epochs for spec in specs], steps, loss_fn=loss_fn)))

    def alone() -> None:
        for model, local, spec, seed, n in zip(models, locals_, specs, seeds, steps):
            train_locally(model, local.x, local.y, spec, seed, spec.local_epochs, n, loss_fn=loss_fn)

    device = locals_[0].device
    threads.use(asked)
    first_alone = _timed(alone, device)
    run_alone = (tasks or 0) * first_alone / copies * sum(full) / sum(steps)
    cost = 4 * first_alone + (FIRST_BATCHED_S if why is None else 0.0)
    if tasks is not None and cost > COST_SHARE * run_alone:
        return Probe(copies, why_not=f"this worker's {tasks} tasks would train in about {run_alone:.2f}s alone, "
                     f"too little to repay measuring ({cost:.2f}s)")
    together_s = math.nan
    if why is None:
        both()  # the first batched step in this process (~20 ms on a 2-core laptop), untimed
        first, again_alone, second = (_timed(way, device) for way in (both, alone, both))
        together_s = min(first, second)
    else:
        again_alone = _timed(alone, device)
    alone_s, fewer = min(first_alone, again_alone), 0
    if asked > 1:  # one at a time may run faster on one thread (actors/training/threads.py)
        threads.use(1)
        one_thread = min(_timed(alone, device), _timed(alone, device))  # as many tries as on the group's
        threads.use(asked)
        if one_thread <= MARGIN * alone_s:
            alone_s, fewer = one_thread, 1
            for local in locals_:
                threads.prefer_alone(local, 1)
    return Probe(copies, sum(steps) / copies, together_s, alone_s, sum(full) / copies, why, fewer)


def _timed(way: Callable[[], None], device: Any) -> float:
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    way()
    sync()
    return time.perf_counter() - started

"""Sums made in the pool workers: which runs use them, and how the driver folds them in.

A pool worker serving many participants can answer a sync round in one call with one
vector, the example-weighted sum of its participants' deltas
(:mod:`actors.participant.summing`): one round trip per worker per round instead of one
per task. That is exact only where the strategy consumes nothing but that weighted mean,
and where every update of the round is known to be aggregated when the worker sums it:

- the strategy aggregates a mean (it ``supports_private_aggregation``, the same property
  secure aggregation needs), of plain deltas or gradients of one shared model, with
  nothing beside the payload and no rule that inspects single updates;
- sync rounds with no ``over_select`` and no ``deadline_s``: every task of a round is
  admitted with weight 1, never dropped late or discounted for staleness;
- no ``task_timeout_s``: a task is never abandoned alone while its worker's call goes on;
- no secure aggregation and no DP-FedAvg, which have sums of their own.

Anything else keeps one call per task. ``schedule.sum_in_workers: false`` turns it off.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from actors.participant.summing import WorkerSum
from orchestrator.config import RunConfig
from orchestrator.records.history import History
from strategies.base import Strategy
from strategies.types import Update


def sums_in_workers(config: RunConfig, private: bool) -> bool:
    """Whether this run's pool workers sum their updates (the rules above); ``private``:
    secure aggregation or DP-FedAvg is on."""
    schedule = config.schedule
    return (schedule.mode == "sync" and schedule.sum_in_workers and schedule.over_select == 0
            and schedule.deadline_s is None and schedule.task_timeout_s is None and not private
            and aggregates_a_mean(config.strategy.cls) and any(g.hosting == "pool" for g in config.groups))


def aggregates_a_mean(strategy: type[Strategy]) -> bool:
    """Whether ``strategy`` consumes nothing but the example-weighted mean of the deltas (or
    gradients) of one shared model.

    >>> from strategies import STRATEGIES
    >>> sorted(name for name, cls in STRATEGIES.items() if aggregates_a_mean(cls))
    ['ditto', 'fedadagrad', 'fedadam', 'fedavg', 'fedavgm', 'fedprox', 'fedsgd', 'fedyogi']
    """
    return (strategy.supports_private_aggregation and not strategy.needs_individual_updates
            and not strategy.update_extras and strategy.payload in ("delta", "gradient")
            and strategy.global_state == "weights")


class WorkerSums:
    """The sums of the calls in flight or arrived, by the tasks they cover."""

    def __init__(self, on: bool = False, clip_norm: float | None = None) -> None:
        self.on = on
        self.clip_norm = clip_norm
        self._of: dict[int, ray.ObjectRef] = {}  # task id -> its worker call's sum

    def send(self, chunk: list[tuple[Any, Any, Any]], state_ref: ray.ObjectRef,
             cohort: tuple[int, int] | None) -> list[ray.ObjectRef]:
        """One ``train_round`` call for ``chunk`` (``(member, instructions, task)`` of one
        worker): a ref per task, in order, as if each were its own call."""
        handle = chunk[0][0].handle
        refs = handle.train_round.options(num_returns=len(chunk) + 1).remote(
            [(member.address(), instructions) for member, instructions, _ in chunk], state_ref, self.clip_norm, cohort)
        for _, _, task in chunk:
            self._of[task.task_id] = refs[-1]
        return refs[:-1]

    def forget(self, task_id: int) -> None:
        """The task brought no summed update (it failed, or its update came back whole)."""
        self._of.pop(task_id, None)

    def fold(self, batch: list[Update], history: History, version: int) -> list[Update]:
        """What the strategy sees: ``batch`` itself when no update in it was summed, else
        :func:`combine` of it with the sums its summed updates went into."""
        summed = [u for u in batch if u.summed]
        if not summed:
            return batch
        refs = list(dict.fromkeys(self._of.pop(u.task_id) for u in summed))
        seen, refused = combine(batch, ray.get(refs))
        for update in (u for u in summed if u.task_id in refused):
            history.record("rejected", participant=update.participant, task_id=update.task_id, version=version,
                           detail="its worker summed it, but the driver did not admit every update of that sum")
        return seen


def combine(batch: list[Update], parts: list[WorkerSum]) -> tuple[list[Update], set[int]]:
    """One update, the example-weighted mean of every update in ``batch``: the workers' sums
    (``parts``) for the summed ones, the payload of any that came whole (a dedicated
    participant's). That is the one update secure aggregation hands a strategy too. Also
    returns the tasks left out: a sum covering a task the batch lacks or discounted (the
    driver refused its update after the worker added it; the rules above leave no way to)
    is not added at all, so nothing refused is ever averaged in.

    >>> from strategies.types import Layout
    >>> lay = Layout(("w",), ((1,),))
    >>> ups = [Update(n, 0, "delta", np.zeros(0, np.float32), lay, k, task_id=i, summed=True)
    ...        for i, (n, k) in enumerate([("a", 1), ("b", 3)])]
    >>> whole = Update("c", 0, "delta", np.array([4.], np.float32), lay, 4, task_id=2)
    >>> seen, left_out = combine(ups + [whole], [WorkerSum(np.array([7.]), 4, (0, 1))])
    >>> seen[0].payload.tolist(), seen[0].num_examples, left_out
    ([2.875], 8, set())
    """
    admitted = {u.task_id for u in batch if u.summed and u.weight == 1.0}
    refused: set[int] = set()
    total = np.zeros(batch[0].layout.size, np.float64)
    for part in parts:
        if set(part.task_ids) <= admitted:
            total += part.total
        else:
            refused |= set(part.task_ids)
    kept = [u for u in batch if u.task_id not in refused]
    for update in (u for u in kept if not u.summed):
        total += update.num_examples * update.weight * update.payload.astype(np.float64)
    examples = sum(u.num_examples for u in kept)
    first = kept[0] if kept else batch[0]
    return [Update(
        participant=f"<{len(kept)} summed>", base_version=min(u.base_version for u in batch), kind=first.kind,
        payload=(total / max(examples, 1e-12)).astype(np.float32), layout=first.layout,
        num_examples=examples, task_id=first.task_id, staleness=max(u.staleness for u in batch), weight=1.0,
    )], refused

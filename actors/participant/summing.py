"""A pool worker's updates of one round, summed where they were trained.

When the run's aggregation is an example-weighted sum of the deltas (FedAvg and the
strategies built on its mean; the driver decides, ``orchestrator/cluster/worker_sums.py``),
a pool worker gets the round's tasks for all its participants in one call and answers
with one vector, ``sum_i n_i * delta_i``, instead of one delta per task: one round trip
per worker per round, and the driver adds a few vectors rather than one per participant.

Each update still goes back on its own, without its payload, so the history keeps a row per
task. The checks the driver would run on a payload (length, layout, non-finite values)
run here, on each update before it is added; one that fails is sent back whole and not
added, so the driver records its rejection exactly as it would have. ``updates.clip_norm``
is applied here for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strategies.hygiene import clip_to_norm, rejection_reason
from strategies.types import Layout, Update


@dataclass
class WorkerSum:
    """What one worker's call adds to the round: ``sum_i n_i * payload_i`` (float64) over the
    updates it checked, and which tasks those were."""

    total: np.ndarray
    examples: float
    task_ids: tuple[int, ...]


def sum_checked(outcomes: list[Update | BaseException], layout: Layout,
                clip_norm: float | None) -> WorkerSum:
    """Add every update in ``outcomes`` that passes the payload checks into one sum, and
    strip its payload (``Update.summed``); an update that fails them, and every failure,
    is left as it is for the driver.

    >>> lay = Layout(("w",), ((2,),))
    >>> good = Update("a", 0, "delta", np.array([1., 2.], np.float32), lay, 3, task_id=7)
    >>> bad = Update("b", 0, "delta", np.array([np.nan, 0.], np.float32), lay, 1, task_id=8)
    >>> s = sum_checked([good, bad], lay, None)
    >>> s.total.tolist(), s.examples, s.task_ids, good.summed, bad.payload.size
    ([3.0, 6.0], 3.0, (7,), True, 2)
    """
    total = np.zeros(layout.size, np.float64)
    examples, ids = 0.0, []
    for update in outcomes:
        if not isinstance(update, Update) or rejection_reason(update, layout) is not None:
            continue
        if clip_norm is not None:
            clip_to_norm(update, clip_norm)
        total += update.num_examples * update.payload.astype(np.float64)
        examples += update.num_examples
        ids.append(update.task_id)
        update.payload, update.summed = np.zeros(0, np.float32), True
    return WorkerSum(total, examples, tuple(ids))

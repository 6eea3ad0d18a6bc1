"""``schedule.adaptive_local_work``: give slow participants less local work.

Each participant's throughput (samples per second of task time, including any simulated
slowdown) is measured from its finished tasks and smoothed. A participant's next task
gets ``base_steps * its_rate / fastest_rate`` local steps (at least one), so every task
takes about as long as the fastest participant's full task and nobody is the straggler
the others wait for. Until a participant has been measured it does its full base work.
Pure bookkeeping, no Ray: the run loop feeds it timings and asks it for step counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class AdaptiveLocalWork:
    """Local steps per participant, scaled by measured throughput.

    >>> work = AdaptiveLocalWork({"fast": 10, "slow": 10})
    >>> work.observe("fast", samples=320, seconds=1.0)
    >>> work.observe("slow", samples=320, seconds=4.0)
    >>> work.steps_for("fast"), work.steps_for("slow")
    (10, 2)
    """

    def __init__(self, base_steps: dict[str, int], smoothing: float = 0.5) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        self.base_steps = dict(base_steps)
        self.smoothing = smoothing
        self.rates: dict[str, float] = {}

    def observe(self, name: str, samples: float, seconds: float) -> None:
        """Fold one finished task's ``samples / seconds`` into ``name``'s rate."""
        if seconds <= 0 or samples <= 0 or not math.isfinite(samples / seconds):
            return
        rate = samples / seconds
        old = self.rates.get(name)
        self.rates[name] = rate if old is None else (1 - self.smoothing) * old + self.smoothing * rate

    @classmethod
    def for_participants(cls, members: Iterable[Any]) -> AdaptiveLocalWork:
        """Each participant's configured work, from its spec and its reported data size."""
        return cls({m.name: base_steps(m.info.get("num_examples", 1), m.spec.train.batch_size,
                                       m.spec.train.local_epochs, m.spec.train.local_steps)
                    for m in members})

    def steps_for(self, name: str) -> int:
        """The local steps ``name``'s next task should do."""
        base = self.base_steps[name]
        if name not in self.rates:
            return base
        fastest = max(self.rates.values())
        return max(1, round(base * self.rates[name] / fastest))


def base_steps(num_examples: int, batch_size: int, local_epochs: int, local_steps: int | None) -> int:
    """The full local work of one task, in optimizer steps."""
    if local_steps is not None:
        return local_steps
    return local_epochs * max(1, math.ceil(num_examples / batch_size))

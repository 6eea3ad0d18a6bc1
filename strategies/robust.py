"""Byzantine-robust aggregation: coordinate-wise Median, TrimmedMean, Krum and MultiKrum.

- Median and TrimmedMean: Yin et al., "Byzantine-Robust Distributed Learning: Towards
  Optimal Statistical Rates", ICML 2018.
- Krum and MultiKrum: Blanchard et al., "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent", NeurIPS 2017.

How weights are used (the same for all four): every update gets one equal vote.
``num_examples`` is self-reported, so a Byzantine participant could claim a million
examples and outvote everyone; it is ignored here. ``Update.weight`` comes from the
driver's own schedule (the staleness discount), so it is trusted: the robust statistic
is taken over the raw deltas and then scaled by the batch's mean weight (Median,
TrimmedMean) or each selected delta is scaled by its own weight (Krum, MultiKrum). In
synchronous rounds every weight is 1 and this is the textbook rule.

Coordinate-wise statistics run block by block over the payloads (``column_blocks``), so
a 100 x 10M batch never needs a second full copy in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strategies.base import Strategy, column_blocks, schedule_weights, weighted_sum
from strategies.types import Update


def _mean_weight(updates: Sequence[Update]) -> np.float32:
    return np.float32(schedule_weights(updates).mean())


class Median(Strategy):
    """Coordinate-wise median of the deltas: one wild update cannot move it far.

    >>> import numpy as np
    >>> from strategies.types import Layout, Update
    >>> lay = Layout(("w",), ((2,),))
    >>> ups = [Update(str(i), 0, "delta", np.array(v, np.float32), lay, 1)
    ...        for i, v in enumerate([[1., 2.], [2., 3.], [1e6, -1e6]])]
    >>> Median().aggregate(np.zeros(2, np.float32), ups).tolist()
    [2.0, 2.0]
    """

    name = "median"
    needs_individual_updates = True

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        if not updates:
            raise ValueError("cannot aggregate an empty batch of updates")
        step = np.empty_like(global_params, dtype=np.float32)
        for cols, block in column_blocks([u.payload for u in updates]):
            step[cols] = np.median(block, axis=0)
        step *= _mean_weight(updates)
        return global_params + step


@dataclass(frozen=True)
class TrimmedMeanParams:
    """``beta``: fraction of updates dropped at *each* end of every coordinate before
    averaging (Yin et al.'s beta); ``floor(beta * n)`` are dropped per side, fewer if
    that would leave nothing. Choose it at least the expected fraction of attackers."""

    beta: float = 0.1
    """Fraction trimmed from each end, in [0, 0.5)."""

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {self.beta}")


def trim_count(n: int, beta: float) -> int:
    """How many values TrimmedMean drops from each end of a coordinate with ``n`` updates."""
    return min(int(np.floor(beta * n)), (n - 1) // 2)


class TrimmedMean(Strategy):
    """Per coordinate: sort, drop the ``k`` lowest and ``k`` highest, average the rest.

    >>> import numpy as np
    >>> from strategies.types import Layout, Update
    >>> lay = Layout(("w",), ((1,),))
    >>> ups = [Update(str(v), 0, "delta", np.array([v], np.float32), lay, 1) for v in (0., 1., 2., 9.)]
    >>> TrimmedMean(TrimmedMeanParams(beta=0.25)).aggregate(np.zeros(1, np.float32), ups).tolist()
    [1.5]
    """

    name = "trimmed_mean"
    needs_individual_updates = True
    Params = TrimmedMeanParams

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        if not updates:
            raise ValueError("cannot aggregate an empty batch of updates")
        n = len(updates)
        k = trim_count(n, self.params.beta)
        step = np.empty_like(global_params, dtype=np.float32)
        for cols, block in column_blocks([u.payload for u in updates]):
            kept = np.sort(block, axis=0)[k : n - k]
            step[cols] = kept.mean(axis=0)
        step *= _mean_weight(updates)
        return global_params + step


@dataclass(frozen=True)
class KrumParams:
    """``f``: how many Byzantine participants to tolerate. Each update is scored by the
    summed squared distance to its ``n - f - 2`` nearest others; Krum keeps the lowest.
    The guarantee needs ``n >= 2f + 3``; with fewer updates (an async batch) the
    neighbour count is clamped to ``[1, n - 1]`` instead of failing the run."""

    f: int = 1
    """Number of Byzantine participants tolerated."""

    def __post_init__(self) -> None:
        if self.f < 0:
            raise ValueError(f"f must be >= 0, got {self.f}")


@dataclass(frozen=True)
class MultiKrumParams:
    """``f`` as in Krum; ``m``: how many of the best-scored updates are averaged
    (``None``: ``n - f``). ``m = 1`` is Krum."""

    f: int = 1
    """Number of Byzantine participants tolerated."""
    m: int | None = None
    """Updates selected and averaged; default ``n - f``."""

    def __post_init__(self) -> None:
        if self.f < 0:
            raise ValueError(f"f must be >= 0, got {self.f}")
        if self.m is not None and self.m < 1:
            raise ValueError(f"m must be >= 1, got {self.m}")


def krum_scores(payloads: Sequence[np.ndarray], f: int) -> np.ndarray:
    """Krum score of each payload: sum of squared distances to its nearest neighbours.

    Distances come from one Gram matrix (``|a|^2 + |b|^2 - 2 a.b``), accumulated over
    column blocks in float64, so the cost is one ``n x n`` product per block.
    """
    n = len(payloads)
    if n == 1:
        return np.zeros(1)
    gram = np.zeros((n, n), dtype=np.float64)
    for _, block in column_blocks(payloads):
        gram += block @ block.T
    sq = np.diag(gram)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    np.fill_diagonal(dist, np.inf)
    k = int(np.clip(n - f - 2, 1, n - 1))
    return np.sort(dist, axis=1)[:, :k].sum(axis=1)


class Krum(Strategy):
    """Apply the single update closest to its neighbours (``self.last_selected`` says which).

    >>> import numpy as np
    >>> from strategies.types import Layout, Update
    >>> lay = Layout(("w",), ((1,),))
    >>> ups = [Update(str(v), 0, "delta", np.array([v], np.float32), lay, 1)
    ...        for v in (1.0, 1.0, 2.0, 0.0, -50.0)]
    >>> Krum(KrumParams(f=1)).aggregate(np.zeros(1, np.float32), ups).tolist()
    [1.0]
    """

    name = "krum"
    needs_individual_updates = True
    Params = KrumParams

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self.last_selected: list[str] = []

    def _how_many(self, n: int) -> int:
        return 1

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        if not updates:
            raise ValueError("cannot aggregate an empty batch of updates")
        payloads = [u.payload for u in updates]
        scores = krum_scores(payloads, self.params.f)
        chosen = np.argsort(scores, kind="stable")[: self._how_many(len(updates))]
        self.last_selected = [updates[i].participant for i in chosen]
        weights = schedule_weights(updates)[chosen] / len(chosen)
        return global_params + weighted_sum([payloads[i] for i in chosen], weights)


class MultiKrum(Krum):
    """Average the ``m`` best-scored updates (Krum's score): keeps Krum's robustness
    while averaging away more of the honest noise."""

    name = "multikrum"
    Params = MultiKrumParams

    def _how_many(self, n: int) -> int:
        m = self.params.m if self.params.m is not None else n - self.params.f
        return int(np.clip(m, 1, n))

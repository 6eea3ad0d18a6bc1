"""Synthetic(alpha, beta): the FedProx benchmark (Li et al., MLSys 2020; also in LEAF).

Every participant ``k`` has its own softmax-regression task, so the data is non-IID by
construction rather than by a partitioner::

    u_k ~ N(0, alpha),  B_k ~ N(0, beta)            (alpha, beta: standard deviations,
    W_k, b_k entries ~ N(u_k, 1)                      as in the authors' generator)
    v_k entries ~ N(B_k, 1)
    x ~ N(v_k, Sigma),  Sigma diagonal, Sigma_jj = j^-1.2
    y = argmax(softmax(W_k^T x + b_k))

``beta`` moves each participant's inputs, so larger beta skews its labels. ``alpha`` moves
every entry of ``W_k`` and ``b_k`` by the same ``u_k``, which adds one constant to every
class's logit: it changes each participant's true parameters, never its labels.

A participant's rows come from a random stream seeded by ``(seed, k)`` alone, so it
generates its own data inside its own actor in O(its size), never anyone else's, and the
data of participant ``k`` does not depend on how many participants the run has. Its size
comes from a separate stream, so a driver can know every size without generating data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_SIZE_STREAM, _DATA_STREAM = 0, 1
"""Tags of a participant's two independent random streams."""

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Synthetic:
    """The generator's settings; ``participant(k)`` is participant ``k``'s data.

    Sizes follow the paper's power law: ``min_size + floor(LogNormal(size_mu, size_sigma))``,
    capped at ``max_size``. The last ``test_fraction`` of a participant's rows (at least
    one) are its own test split.

    >>> gen = Synthetic(alpha=0.5, beta=0.5)
    >>> x_train, y_train, x_test, y_test = gen.participant(3)
    >>> len(x_train) + len(x_test) == gen.size(3), x_train.shape[1]
    (True, 60)
    """

    alpha: float = 1.0
    beta: float = 1.0
    num_features: int = 60
    num_classes: int = 10
    seed: int = 0
    size_mu: float = 4.0
    size_sigma: float = 2.0
    min_size: int = 50
    max_size: int | None = 10_000
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.min_size < 2:
            raise ValueError(f"min_size must be at least 2 (a train and a test row), got {self.min_size}")
        if self.max_size is not None and self.max_size < self.min_size:
            raise ValueError(f"max_size={self.max_size} is below min_size={self.min_size}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        if index < 0:
            raise ValueError(f"participant index must be >= 0, got {index}")
        return np.random.default_rng([self.seed, index, stream])

    def size(self, index: int) -> int:
        """How many rows participant ``index`` has, train and test: no data generated."""
        drawn = int(self._rng(index, _SIZE_STREAM).lognormal(self.size_mu, self.size_sigma))
        size = self.min_size + drawn
        return size if self.max_size is None else min(size, self.max_size)

    def sizes(self, indices: Iterable[int]) -> np.ndarray:
        """:meth:`size` of each participant, e.g. for a driver weighting or scheduling."""
        return np.array([self.size(k) for k in indices], np.int64)

    def num_test(self, size: int) -> int:
        """Rows held out of ``size`` as the participant's test split (at least one each)."""
        return min(size - 1, max(1, round(self.test_fraction * size)))

    def covariance_diagonal(self) -> np.ndarray:
        """``Sigma_jj = j^-1.2`` for ``j = 1..num_features``: later features vary less."""
        return np.arange(1, self.num_features + 1, dtype=np.float64) ** -1.2

    def _task(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # unit-scale draws scaled after: the same stream, whatever alpha and beta are
        u = self.alpha * rng.standard_normal()
        big_b = self.beta * rng.standard_normal()
        w = u + rng.standard_normal((self.num_features, self.num_classes))
        b = u + rng.standard_normal(self.num_classes)
        v = big_b + rng.standard_normal(self.num_features)
        return w, b, v

    def task(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Participant ``index``'s true model and input mean: ``(W_k, b_k, v_k)``."""
        return self._task(self._rng(index, _DATA_STREAM))

    def examples(self, index: int) -> Arrays:
        """All of participant ``index``'s rows: float32 features, int64 labels."""
        rng = self._rng(index, _DATA_STREAM)
        w, b, v = self._task(rng)
        noise = rng.standard_normal((self.size(index), self.num_features))
        x = v + noise * np.sqrt(self.covariance_diagonal())
        y = np.argmax(x @ w + b, axis=1)  # softmax is monotone: its argmax is the logits'
        return x.astype(np.float32), y.astype(np.int64)

    def participant(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(x_train, y_train, x_test, y_test)`` of participant ``index``."""
        x, y = self.examples(index)
        cut = len(y) - self.num_test(len(y))
        return x[:cut], y[:cut], x[cut:], y[cut:]

    def pooled_test_set(self, indices: Iterable[int]) -> Arrays:
        """The union of the test splits of ``indices``: the paper's test set over those
        participants (each weighted by its own test size)."""
        parts = [self.participant(k)[2:] for k in indices]
        if not parts:
            return np.zeros((0, self.num_features), np.float32), np.zeros(0, np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

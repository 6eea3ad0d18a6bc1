"""Split one dataset into per-participant shards: IID, label-skewed, or pathological.

Every participant recomputes the same split from the same seed inside its own actor and
keeps only its own part, so no sample ever travels from the driver.
"""

from __future__ import annotations

import numpy as np


def iid(num_samples: int, num_parts: int, seed: int) -> list[np.ndarray]:
    """Shuffle and deal out indices so part sizes differ by at most one."""
    _check(num_samples, num_parts)
    order = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(p) for p in np.array_split(order, num_parts)]


def dirichlet(
    labels: np.ndarray, num_parts: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Label skew: each class is spread over parts with proportions ~ Dirichlet(alpha).

    Small ``alpha`` (0.1-0.5) gives each part a few dominant classes; large ``alpha``
    approaches IID. Draws are repeated until every part has at least ``min_size`` samples
    (capped at half the mean part size, never below one: no part is ever empty), the usual
    way to avoid empty participants. A draw's part sizes are counted before its parts are
    built, so 1,000 failing draws take a fraction of a second, not ten.
    """
    labels = np.asarray(labels)
    _check(len(labels), num_parts)
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    if len(labels) < 2 * num_parts:
        raise PartitionError(
            f"a Dirichlet({alpha}) split of {len(labels)} samples into {num_parts} parts (under 2 per part "
            "on average) leaves parts empty", min_size=None)
    rng = np.random.default_rng(seed)
    wanted = min_size
    min_size = min(min_size, len(labels) // (2 * num_parts))
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    concentration = np.full(num_parts, alpha)
    bounds = np.zeros((len(by_class), num_parts + 1), np.int64)  # per class: 0, its cuts, its size
    bounds[:, -1] = [len(m) for m in by_class]
    for _ in range(DRAWS):
        order = []
        for c, members in enumerate(by_class):
            order.append(rng.permutation(members))
            bounds[c, 1:-1] = np.cumsum(rng.dirichlet(concentration))[:-1] * len(members)
        if np.diff(bounds, axis=1).sum(0).min() >= min_size:
            parts: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
            for idx, cuts in zip(order, bounds[:, 1:-1]):
                for p, chunk in enumerate(np.split(idx, cuts)):
                    parts[p].append(chunk)
            return [np.sort(np.concatenate(p)) for p in parts]
    capped = f" (min_size {wanted} capped at half the mean part size)" if min_size < wanted else ""
    raise PartitionError(
        f"could not draw a Dirichlet({alpha}) split of {len(labels)} samples into {num_parts} parts "
        f"with at least {min_size} sample{'s' if min_size > 1 else ''} each{capped} in {DRAWS} draws",
        min_size=min_size)


DRAWS = 1000
"""Dirichlet draws tried before a split is declared infeasible."""


class PartitionError(ValueError):
    """A split that cannot give every part its minimum; ``min_size`` is the one it tried
    (None: too few samples for any minimum)."""

    def __init__(self, message: str, min_size: int | None) -> None:
        super().__init__(message)
        self.min_size = min_size


def shards(labels: np.ndarray, num_parts: int, shards_per_part: int, seed: int) -> list[np.ndarray]:
    """McMahan et al.'s pathological split: sort by label, cut into equal shards, deal
    ``shards_per_part`` random shards to each part (so each sees only a few classes)."""
    labels = np.asarray(labels)
    _check(len(labels), num_parts * shards_per_part)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, num_parts * shards_per_part)
    deal = rng.permutation(len(pieces)).reshape(num_parts, shards_per_part)
    return [np.sort(np.concatenate([pieces[i] for i in row])) for row in deal]


def _check(num_samples: int, num_parts: int) -> None:
    if num_parts < 1:
        raise ValueError(f"need at least one part, got {num_parts}")
    if num_samples < num_parts:
        raise ValueError(f"cannot split {num_samples} samples into {num_parts} parts")

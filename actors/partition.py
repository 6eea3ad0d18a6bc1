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
    (capped so it stays feasible), the usual way to avoid empty participants.
    """
    labels = np.asarray(labels)
    _check(len(labels), num_parts)
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    min_size = min(min_size, len(labels) // (2 * num_parts))
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_parts, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(idx, cuts)):
                parts[p].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise ValueError(
        f"could not draw a Dirichlet({alpha}) split of {len(labels)} samples into "
        f"{num_parts} parts with at least {min_size} samples each"
    )


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

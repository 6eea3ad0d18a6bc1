"""Secure aggregation arithmetic: fixed-point encoding and pairwise masks in Z_(2^64).

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017. Each pair (i, j) of a cohort shares a seed; i adds the mask the seed expands to
and j subtracts it, so every mask cancels in the sum. Floats are first encoded as fixed
point integers in the ring of uint64 (wrap-around is the ring's addition), which makes the
cancellation exact, unlike float arithmetic. The driver only ever sees masked vectors
(uniformly random on their own) and their sum.

What is here is pure numpy: no keys, no Ray. Key agreement lives with the participants
(``actors/participant/secure_aggregation.py``); the driver calls :func:`unmask_sum`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FRACTION_BITS = 24
"""Fixed-point precision: 2**-24 ~ 6e-8 absolute per value; sums up to ~5e11 fit."""

_SCALE = float(2**FRACTION_BITS)


def encode(values: np.ndarray) -> np.ndarray:
    """Float vector -> fixed point in Z_(2^64) (two's complement for negatives)."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * _SCALE)
    return scaled.astype(np.int64).view(np.uint64)


def decode(ring: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode` for a (possibly summed) ring vector, as float64."""
    return np.asarray(ring, dtype=np.uint64).view(np.int64).astype(np.float64) / _SCALE


def expand_mask(seed: bytes, size: int) -> np.ndarray:
    """A uniformly random ring vector from a 32-byte pairwise seed (PCG64 stream)."""
    return np.random.PCG64(int.from_bytes(seed, "little")).random_raw(size).astype(np.uint64, copy=False)


def mask_sign(me: str, peer: str) -> int:
    """+1 for the lexically smaller of the pair, -1 for the other: the masks cancel."""
    return 1 if me < peer else -1


def apply_masks(ring: np.ndarray, signed_masks: Sequence[tuple[int, np.ndarray]]) -> np.ndarray:
    """``ring + sum(sign * mask)`` in Z_(2^64)."""
    out = np.array(ring, dtype=np.uint64, copy=True)
    for sign, mask in signed_masks:
        if sign > 0:
            out += mask
        else:
            out -= mask
    return out


def ring_sum(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Sum of ring vectors with wrap-around (what the driver computes)."""
    if not vectors:
        raise ValueError("no masked vectors to sum")
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.uint64))
    for v in vectors:
        total += v
    return total


def unmask_sum(masked: Sequence[np.ndarray], recovered: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Decode the sum of masked vectors.

    ``recovered`` holds, from each survivor, the signed sum of its masks with peers that
    dropped out after the masks were fixed; they are the only masks that do not cancel,
    so they are subtracted before decoding.
    """
    total = ring_sum(masked)
    for extra in recovered:
        total -= np.asarray(extra, dtype=np.uint64)
    return decode(total)

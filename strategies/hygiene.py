"""Checks every update passes before any strategy sees it.

A single NaN or a vector of the wrong length would silently poison an average, so the
driver runs :func:`rejection_reason` on each arrival and records a rejection event
instead of aggregating it.
"""

from __future__ import annotations

import numpy as np

from strategies.types import Layout, Update


def rejection_reason(update: Update, expected: Layout | None) -> str | None:
    """Why ``update`` must not be aggregated, or ``None`` if it is fine.

    ``expected`` is the layout the driver wants for this payload kind; ``None`` skips the
    layout check (soft labels, whose layout is the public set's).
    """
    payload = update.payload
    if not isinstance(payload, np.ndarray) or payload.ndim != 1:
        return f"payload must be a 1-D array, got {type(payload).__name__}"
    if payload.dtype != np.float32:
        return f"payload dtype is {payload.dtype}, expected float32"
    if payload.size != update.layout.size:
        return f"payload has {payload.size} values but its layout describes {update.layout.size}"
    if expected is not None and update.layout != expected:
        missing = set(update.layout.names) ^ set(expected.names)
        detail = f" (differs in {sorted(missing)[:3]})" if missing else " (shapes differ)"
        return f"layout does not match the global model{detail}"
    if not np.isfinite(payload).all():
        bad = int((~np.isfinite(payload)).sum())
        return f"payload has {bad} non-finite values"
    if update.num_examples < 0:
        return f"negative example count {update.num_examples}"
    return None


def clip_to_norm(update: Update, max_norm: float) -> float:
    """Scale the payload in place so its L2 norm is at most ``max_norm``; return the old norm."""
    norm = float(np.linalg.norm(update.payload))
    if norm > max_norm > 0:
        update.payload = update.payload * np.float32(max_norm / norm)
    return norm

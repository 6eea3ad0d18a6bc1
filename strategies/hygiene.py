"""Checks every update passes before any strategy sees it.

A single NaN or a vector of the wrong length would silently poison an average, so the
driver runs :func:`rejection_reason` on each arrival and records a rejection event
instead of aggregating it.
"""

from __future__ import annotations

import numpy as np

from strategies.types import Layout, Update


def rejection_reason(update: Update, expected: Layout | None, extras: tuple[str, ...] = ()) -> str | None:
    """Why ``update`` must not be aggregated, or ``None`` if it is fine.

    ``expected`` is the layout the driver wants for this payload kind; ``None`` skips the
    layout check (soft labels, whose layout is the public set's). ``extras`` names the
    vectors the strategy needs beside the payload, each checked like the payload.

    >>> from strategies.types import Layout, Update
    >>> lay = Layout(("w",), ((2,),))
    >>> up = Update("a", 0, "delta", np.zeros(2, np.float32), lay, 1)
    >>> rejection_reason(up, lay, extras=("control",))
    "missing 'control' beside the payload"
    """
    payload = update.payload
    problem = _vector_problem("payload", payload)
    if problem:
        return problem
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
    for name in extras:
        if name not in update.extras:
            return f"missing {name!r} beside the payload"
        vector = update.extras[name]
        problem = _vector_problem(name, vector)
        if problem is None and vector.size != payload.size:
            problem = f"{name} has {vector.size} values, the payload {payload.size}"
        if problem is None and not np.isfinite(vector).all():
            problem = f"{name} has {int((~np.isfinite(vector)).sum())} non-finite values"
        if problem:
            return problem
    return None


def _vector_problem(what: str, vector: object) -> str | None:
    if not isinstance(vector, np.ndarray) or vector.ndim != 1:
        return f"{what} must be a 1-D array, got {type(vector).__name__}"
    if vector.dtype != np.float32:
        return f"{what} dtype is {vector.dtype}, expected float32"
    return None


def clip_to_norm(update: Update, max_norm: float) -> float:
    """Give ``update`` a payload scaled to an L2 norm of at most ``max_norm``; return the old norm.
    The payload is replaced, not written into: it may be a read-only object-store view."""
    norm = float(np.linalg.norm(update.payload))
    if norm > max_norm > 0:
        update.payload = update.payload * np.float32(max_norm / norm)
    return norm

"""A participant's private state, kept in its own directory on its own node.

What a participant learns locally and must not lose when its actor crashes and Ray
restarts it (``resources.max_restarts``): how many tasks it has done, its simulator's
random state, its strategy's client state (a personal model, a control variate), and the
privacy budget local DP-SGD has spent. None of it ever
goes to the driver. The file is written atomically (temp file + ``os.replace``) after
every task that changed the random state, the client state or the budget, so a crash
mid-write leaves the previous state intact. The task counters ride along with those
writes: FedAvg without a simulator writes once, and a restarted actor's ``tasks_done``
then counts from that write (the driver keeps its own count).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STATE_FILE = "state.pkl"
KEY_FILE = "secagg.key"


@dataclass
class PrivateState:
    """What survives an actor restart."""

    tasks_done: int = 0
    rng_state: dict[str, Any] | None = None
    client_state: dict[str, np.ndarray] = field(default_factory=dict)
    """The strategy client half's ``state_dict()``: personal parameters (FedPer, FedRep,
    LG-FedAvg, Ditto, soft labels), SCAFFOLD's control variate."""
    last_task_id: int = -1
    dp_sgd_history: list[tuple[float, float, int]] = field(default_factory=list)
    """Local DP-SGD's accountant history (noise multiplier, sample rate, steps): the budget
    a restarted actor has already spent."""
    restored: bool = field(default=False, compare=False)


class PrivateStateError(RuntimeError):
    """A private state file exists but cannot be used (torn, foreign, unreadable). Raised
    instead of starting afresh, which would forget the DP-SGD budget already spent; move
    or delete the named file by hand to really start afresh."""


def resolve_dir(state_dir: str) -> Path:
    """Absolute as given; relative paths live under this node's temp directory."""
    path = Path(state_dir)
    return path if path.is_absolute() else Path(tempfile.gettempdir()) / path


def load(state_dir: str | None) -> PrivateState:
    """The saved state, or a fresh one only when none was ever saved (no file).

    An unreadable or foreign file raises :class:`PrivateStateError` rather than starting
    afresh: a fresh state would silently reset the silo's local DP-SGD budget. Saves are
    atomic, so such a file is not a crash mid-write but something to look at by hand.
    """
    if state_dir is None:
        return PrivateState()
    path = resolve_dir(state_dir) / STATE_FILE
    if not path.exists():
        return PrivateState()
    try:
        with open(path, "rb") as fh:
            state = pickle.load(fh)
    except Exception as exc:  # noqa: BLE001 - unpickling a torn file raises almost anything
        raise PrivateStateError(
            f"cannot read the participant's private state file {path}: "
            f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(state, PrivateState):
        raise PrivateStateError(
            f"the participant's private state file {path} holds a {type(state).__name__}, "
            "not a PrivateState")
    state.restored = True
    return state


def key_path(state_dir: str | None) -> Path | None:
    """Where the participant keeps its secure-aggregation key pair (beside its state)."""
    return None if state_dir is None else resolve_dir(state_dir) / KEY_FILE


def discard(state_dir: str | None) -> None:
    """Delete the participant's state directory, and its run's directory once empty: a run
    that cannot be resumed leaves nothing behind (10,000 pooled participants would leave
    10,000 files per run in the temp directory)."""
    if state_dir is None:
        return
    directory = resolve_dir(state_dir)
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(OSError):  # only succeeds when no other participant's state is left
        directory.parent.rmdir()


def save(state_dir: str | None, state: PrivateState) -> None:
    """Write atomically; a no-op when the participant has no state directory."""
    if state_dir is None:
        return
    directory = resolve_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / STATE_FILE
    tmp = final.with_name(f"{STATE_FILE}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, final)

"""A participant's private state, kept in its own directory on its own node.

What a participant learns locally and must not lose when its actor crashes and Ray
restarts it (``resources.max_restarts``): how many tasks it has done, its simulator's
random state, its strategy's client state (a personal model, a control variate), and the
privacy budget local DP-SGD has spent. None of it ever
goes to the driver. The file is written atomically (temp file + ``os.replace``) after
every task that changed the random state, the client state or the budget, so a crash
mid-write leaves the previous state intact. The task counters ride along with those
writes: FedAvg without a simulator, whose random state stays as seeded, never writes,
and a restarted actor's ``tasks_done`` counts from the last write (the driver keeps its own
count).

Resuming a run rolls this state back. The driver checkpoints only after an aggregation,
while a participant saves after every task, so after a kill mid-round its state is newer
than the checkpoint. Each save therefore keeps the earlier versions a resume may ask for
(``earlier``, back to the one the latest checkpoint names, :func:`prune`), and
:func:`rolled_back` picks the version a checkpoint names. The local DP-SGD budget is never
rolled back: the updates that spent it have left the silo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

STATE_FILE = "state.pkl"
KEY_FILE = "secagg.key"
SAVED_METRIC = "state_saved"
"""Update metric: 1.0 when the participant saved its private state after this task, so
the driver knows which version to expect of it after a restart or a resume."""


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
    earlier: list[PrivateState] = field(default_factory=list, compare=False)
    """Older versions (oldest first, each without its own ``earlier``) that a resume from
    the run's latest checkpoint may roll back to."""

    def version(self) -> PrivateState:
        """This version alone: what a later save keeps in ``earlier``."""
        return dataclasses.replace(self, earlier=[], dp_sgd_history=[], restored=False)

    def versions(self) -> list[PrivateState]:
        """Every version kept, oldest first, the newest (this one) last."""
        return [*getattr(self, "earlier", []), self]  # (a file written before versions lacks it)


class PrivateStateError(RuntimeError):
    """A private state file exists but cannot be used (torn, foreign, unreadable). Raised
    instead of starting afresh, which would forget the DP-SGD budget already spent; move
    or delete the named file by hand to really start afresh."""


def resolve_dir(state_dir: str) -> Path:
    """Absolute as given; relative paths live under this node's temp directory."""
    path = Path(state_dir)
    return path if path.is_absolute() else Path(tempfile.gettempdir()) / path


def state_path(state_dir: str | None) -> Path | None:
    """The participant's private state file (None: it keeps no state)."""
    return None if state_dir is None else resolve_dir(state_dir) / STATE_FILE


def load(state_dir: str | None) -> PrivateState:
    """The saved state, or a fresh one only when none was ever saved (no file).

    An unreadable or foreign file raises :class:`PrivateStateError` rather than starting
    afresh: a fresh state would silently reset the silo's local DP-SGD budget. Saves are
    atomic, so such a file is not a crash mid-write but something to look at by hand.
    """
    path = state_path(state_dir)
    if path is None or not path.exists():
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


class Rollback(NamedTuple):
    """Where a resume puts one participant's private state back, from the checkpoint."""

    before: int
    """Roll back to the newest version saved after a task with a smaller id: tasks from
    ``before`` on were in flight, or not yet dispatched, when the checkpoint was taken."""
    expected: int | None
    """The task after which the driver knows a version was saved (None: none was): a state
    that is missing or older is refused rather than silently started afresh."""


def prune(state: PrivateState, before: int | None) -> None:
    """Drop the versions no resume can ask for: all but the newest when the run writes no
    checkpoints (``before`` None), else those older than the newest saved before ``before``."""
    versions = state.versions()[:-1]
    if before is None:
        state.earlier = []
        return
    older = [i for i, v in enumerate(versions) if v.last_task_id < before]
    state.earlier = versions[older[-1]:] if older else versions


def rolled_back(state: PrivateState | None, rollback: Rollback, who: str, path: Path) -> PrivateState:
    """The version ``rollback`` names, as the newest (later ones dropped), keeping the
    newest DP-SGD budget; :class:`PrivateStateError` naming ``who`` and ``path`` when the
    driver expects a version that is missing or older."""
    versions = state.versions() if state is not None else []
    kept = [v for v in versions if v.last_task_id < rollback.before]
    chosen = kept[-1] if kept else None
    if rollback.expected is not None:
        if state is None:
            raise PrivateStateError(
                f"participant {who}: the checkpoint expects its private state as of task {rollback.expected}, "
                f"but {path} does not exist (a cleared temp directory, or a node other than the one "
                "it ran on?); starting afresh would reset its client state and DP-SGD budget")
        if chosen is None or chosen.last_task_id < rollback.expected:
            have = "no version that old" if chosen is None else f"task {chosen.last_task_id}"
            raise PrivateStateError(
                f"participant {who}: the checkpoint expects its private state as of task {rollback.expected}, "
                f"but {path} holds {have} (newest: task {versions[-1].last_task_id}), an older state")
    out = (chosen or PrivateState()).version()
    out.earlier = [v.version() for v in kept[:-1]]
    out.dp_sgd_history = list(getattr(state, "dp_sgd_history", [])) if state is not None else []
    out.restored = state is not None
    return out


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

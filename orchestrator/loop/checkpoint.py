"""Checkpoints of the driver's state, written atomically, so a killed run can resume.

A checkpoint is a :class:`~orchestrator.loop.run_state.RunState`: everything the run loop
needs to go on as if it had never stopped (the global parameters, the update buffer, the
counters, and the state of the strategy, the schedule, privacy, the participants' task
counters and the history so far).

Files are ``<run dir>/checkpoints/ckpt-<version>.pkl``. Each is written to a temporary
file in the same directory, fsynced, then ``os.replace``d into place: a crash mid-write
leaves at worst a stray ``.tmp`` file, never a corrupt latest checkpoint.

Exactness: the loop checkpoints right after an aggregation. In ``sync`` mode without
over-selection or a deadline a round closes only when every selected participant has
answered, so nothing is in flight and a resumed run repeats the uninterrupted one bit for
bit. Tasks still in flight at checkpoint time (over-selection, deadlines, ``buffered``)
are simply not remembered: after a resume those participants are idle and get new work.

Checkpoints are pickles: load only run directories you wrote yourself.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import time
from pathlib import Path
from typing import Any

from orchestrator.config import RunConfig
from orchestrator.loop.run_state import RunState
from orchestrator.records.history import History
from orchestrator.records.results import write_config
from strategies.types import Layout

CHECKPOINT_DIR = "checkpoints"
_PREFIX, _SUFFIX = "ckpt-", ".pkl"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def write_checkpoint(run_dir: str | Path, ckpt: RunState, keep: int) -> Path:
    """Write ``ckpt`` atomically and delete all but the ``keep`` newest; return its path."""
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{_PREFIX}{ckpt.version:08d}{_SUFFIX}"
    tmp = final.with_name(final.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(ckpt, fh, protocol=pickle.HIGHEST_PROTOCOL)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary files are ignored)."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.name.startswith(_PREFIX) and p.name.endswith(_SUFFIX)]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):-len(_SUFFIX)]))


def read_latest(run_dir: str | Path) -> RunState:
    """The newest readable checkpoint of ``run_dir``; a clear error if there is none."""
    paths = list_checkpoints(run_dir)
    if not paths:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(run_dir)}")
    problems = []
    for path in reversed(paths):
        try:
            with open(path, "rb") as fh:
                ckpt = pickle.load(fh)
        except Exception as exc:  # noqa: BLE001 - fall back to an older checkpoint
            problems.append(f"{path.name}: {exc}")
            continue
        if isinstance(ckpt, RunState):
            return ckpt
        problems.append(f"{path.name}: not a fedray checkpoint")
    raise FileNotFoundError(f"no readable checkpoint in {checkpoint_dir(run_dir)}: {'; '.join(problems)}")


def capture(state: RunState, participants: Any, owned: dict[str, Any], history: History,
            elapsed: float) -> RunState:
    """The run state with what others own filled in: each participant's counters, each
    owned object's ``state_dict()`` (strategy, schedule, privacy) and the history."""
    return state.snapshot(participants.records(state.next_task_id), {k: v.state_dict() for k, v in owned.items()},
                          history.rows, elapsed)


def restore(saved: RunState, layout: Layout, participants: Any, owned: dict[str, Any],
            history: History) -> RunState:
    """Hand every owned part back and return the run state to continue from; a clear
    ``ValueError`` when the checkpoint does not fit this config."""
    if saved.layout != layout:
        raise ValueError(
            f"checkpoint model layout ({saved.layout.size} parameters) differs from the "
            f"participants' model ({layout.size}); was the config changed?")
    participants.restore(saved.members)
    for key, obj in owned.items():
        obj.load_state_dict(saved.owned[key])
    # keep the listeners (progress display); continue the clock where it stopped
    history.rows[:] = [dict(row) for row in saved.history_rows]
    history.start = time.perf_counter() - saved.elapsed
    return dataclasses.replace(saved, members={}, owned={}, history_rows=[])


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); harmless where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_if_due(out_dir: Path | None, config: RunConfig, state: RunState, participants: Any,
                owned: dict[str, Any], history: History) -> Path | None:
    """Write a checkpoint when ``checkpoint.every`` says this version gets one; its path."""
    policy = config.checkpoint
    if policy.every is None or out_dir is None or state.version % policy.every:
        return None
    if not (out_dir / "config.yaml").exists():  # `fedray run --resume DIR` reads it
        write_config(out_dir, config)
    snapshot = capture(state, participants, owned, history, time.perf_counter() - history.start)
    path = write_checkpoint(out_dir, snapshot, policy.keep)
    participants.checkpointed(snapshot.members)
    return path

"""Checkpoints of the driver's state, written atomically, so a killed run can resume.

A checkpoint is everything the run loop needs to go on as if it had never stopped: the
global parameters, the strategy's state (server optimizer moments), the schedule's state
(round, the numpy Generator that picks participants), each participant's task and failure
counters (per-task seeds derive from them), the update buffer, the history so far and the
privacy accountant's steps.

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

import copy
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strategies.types import Layout, Update

CHECKPOINT_DIR = "checkpoints"
_PREFIX, _SUFFIX = "ckpt-", ".pkl"
_SCHEDULE_SKIP = {"config", "rng", "staleness_fn"}


@dataclass
class RunCheckpoint:
    """One snapshot of the driver, taken between aggregations."""

    run_id: str
    version: int
    params: np.ndarray
    layout: Layout
    strategy_state: dict[str, Any]
    schedule_state: dict[str, Any]
    rng_state: dict[str, Any]
    members: dict[str, dict[str, Any]]
    buffer: list[Update]
    counters: dict[str, Any]
    history_rows: list[dict[str, Any]]
    elapsed: float
    extra: dict[str, Any] = field(default_factory=dict)
    written_at: float = field(default_factory=time.time)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def write_checkpoint(run_dir: str | Path, ckpt: RunCheckpoint, keep: int) -> Path:
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


def read_latest(run_dir: str | Path) -> RunCheckpoint:
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
        if isinstance(ckpt, RunCheckpoint):
            return ckpt
        problems.append(f"{path.name}: not a fedray checkpoint")
    raise FileNotFoundError(f"no readable checkpoint in {checkpoint_dir(run_dir)}: {'; '.join(problems)}")


def capture(orch: Any) -> RunCheckpoint:
    """Snapshot an :class:`~orchestrator.run.Orchestrator` between aggregations."""
    schedule = orch.schedule
    return RunCheckpoint(
        run_id=orch.run_id,
        version=orch.version,
        params=np.array(orch.params, dtype=np.float32, copy=True),
        layout=orch.layout,
        strategy_state=orch.strategy.state_dict(),
        schedule_state={k: copy.deepcopy(v) for k, v in vars(schedule).items() if k not in _SCHEDULE_SKIP},
        rng_state=copy.deepcopy(schedule.rng.bit_generator.state),
        members={name: {"tasks": m.tasks, "failures": m.failures, "lost": m.lost}
                 for name, m in orch.members.items()},
        buffer=list(orch.buffer),
        counters={"next_task_id": orch.next_task_id, "num_updates": orch.num_updates,
                  "last_eval": dict(orch.last_eval), "time_to_target": orch.time_to_target},
        history_rows=[dict(row) for row in orch.history.rows],
        elapsed=orch.history_time(),
        extra=dict(getattr(orch, "checkpoint_extra", lambda: {})()),
    )


def restore(orch: Any, ckpt: RunCheckpoint) -> None:
    """Put ``ckpt`` back into a freshly set-up orchestrator (participants already spawned)."""
    if ckpt.layout != orch.layout:
        raise ValueError(
            f"checkpoint model layout ({ckpt.layout.size} parameters) differs from the "
            f"participants' model ({orch.layout.size}); was the config changed?"
        )
    unknown = sorted(set(ckpt.members) - set(orch.members))
    if unknown:
        raise ValueError(f"checkpoint names participants not in this config: {unknown[:5]}")
    orch.params = np.array(ckpt.params, dtype=np.float32, copy=True)
    orch.version = ckpt.version
    orch.strategy.load_state_dict(ckpt.strategy_state)
    for key, value in ckpt.schedule_state.items():
        setattr(orch.schedule, key, copy.deepcopy(value))
    orch.schedule.rng.bit_generator.state = ckpt.rng_state
    for name, saved in ckpt.members.items():
        member = orch.members[name]
        member.tasks, member.failures = saved["tasks"], saved["failures"]
        member.lost = member.lost or saved["lost"]
    orch.buffer = list(ckpt.buffer)
    orch.next_task_id = ckpt.counters["next_task_id"]
    orch.num_updates = ckpt.counters["num_updates"]
    orch.last_eval = dict(ckpt.counters["last_eval"])
    orch.time_to_target = ckpt.counters["time_to_target"]
    # keep the listeners (progress display); continue the clock where it stopped
    orch.history.rows[:] = [dict(row) for row in ckpt.history_rows]
    orch.history.start = time.perf_counter() - ckpt.elapsed
    restore_extra = getattr(orch, "restore_extra", None)
    if restore_extra is not None:
        restore_extra(ckpt.extra)


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

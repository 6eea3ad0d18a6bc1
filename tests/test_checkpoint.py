"""Checkpoint files (atomic, pruned, readable) and participants' private state across a
real actor restart."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import ray
from conftest import digits_config

from actors.participant import private_state
from actors.participant.participant import Participant
from orchestrator.cluster.specs import participant_specs
from orchestrator.config import load_config
from orchestrator.loop.checkpoint import list_checkpoints, read_latest, write_checkpoint
from orchestrator.loop.run_state import RunState
from strategies.types import GlobalState, Instructions, Layout


def _ckpt(version: int) -> RunState:
    return RunState(
        run_id="r", version=version, params=np.full(3, version, np.float32),
        layout=Layout(("w",), ((3,),)), owned={"schedule": {"round": version}},
        history_rows=[{"event": "x"}], elapsed=1.0,
    )


def test_checkpoints_are_pruned_and_the_latest_wins(tmp_path):
    for v in (1, 2, 3, 10):
        write_checkpoint(tmp_path, _ckpt(v), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000003.pkl", "ckpt-00000010.pkl"]
    latest = read_latest(tmp_path)
    assert latest.version == 10 and latest.params.tolist() == [10.0] * 3


def test_a_crash_mid_write_never_hides_the_last_good_checkpoint(tmp_path):
    write_checkpoint(tmp_path, _ckpt(4), keep=3)
    directory = tmp_path / "checkpoints"
    # what a crash mid-write leaves: a half-written temporary file ...
    (directory / "ckpt-00000005.pkl.123.tmp").write_bytes(pickle.dumps(_ckpt(5))[:20])
    # ... and, worse, a torn final file (a filesystem without atomic rename)
    (directory / "ckpt-00000006.pkl").write_bytes(b"\x80\x05garbage")
    assert read_latest(tmp_path).version == 4


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        read_latest(tmp_path)


def test_private_state_round_trips_and_refuses_torn_files(tmp_path):
    where = str(tmp_path / "p")
    assert private_state.load(where) == private_state.PrivateState()
    private_state.save(where, private_state.PrivateState(tasks_done=3, last_task_id=7))
    loaded = private_state.load(where)
    assert (loaded.tasks_done, loaded.last_task_id, loaded.restored) == (3, 7, True)
    (tmp_path / "p" / private_state.STATE_FILE).write_bytes(b"torn")
    with pytest.raises(private_state.PrivateStateError, match="private state file"):
        private_state.load(where)  # a fresh state would forget the DP-SGD budget spent


def test_restarted_participant_reloads_its_private_state(ray_session, tmp_path):
    config = load_config(digits_config(  # FedPer: the personal head is client state
        checkpoint={"every": 1, "participant_dir": str(tmp_path / "{run_id}" / "{name}")},
        strategy={"name": "fedper"},
    ))
    spec = participant_specs(config, "run")[0][0]
    assert spec.state_dir is not None and spec.name in spec.state_dir
    handle = ray.remote(Participant).options(num_cpus=0.5, max_restarts=1, max_task_retries=0).remote(spec)
    info = ray.get(handle.describe.remote(), timeout=120)
    assert info["tasks_done"] == 0 and not info["restored_state"]
    state = GlobalState(0, ray.get(handle.initial_parameters.remote()), info["layout"])  # all shared
    for task_id in range(2):
        ray.get(handle.train.remote(state, Instructions(task_id=task_id, seed=task_id)), timeout=120)

    ray.kill(handle, no_restart=False)  # a real crash; Ray restarts the actor process
    after = info
    for _ in range(600):  # ray.kill is asynchronous: poll until a new process answers
        try:
            after = ray.get(handle.describe.remote(), timeout=120)
        except ray.exceptions.RayActorError:
            continue
        if after["pid"] != info["pid"]:
            break
    assert after["pid"] != info["pid"], "the actor was not restarted"
    assert after["restored_state"] and after["tasks_done"] == 2
    saved = private_state.load(spec.state_dir)
    assert saved.last_task_id == 1 and saved.client_state["model"].shape == (info["layout"].size,)
    # restored, not only saved: the new process holds the personal model the old one trained
    held = ray.get(handle.__ray_call__.remote(lambda self: self.client.state["model"]), timeout=120)
    np.testing.assert_array_equal(held, saved.client_state["model"])
    assert not np.array_equal(held, state.params)
    assert os.path.isdir(spec.state_dir)
    ray.kill(handle, no_restart=True)

"""Checkpoint and resume for real: SIGKILL a driver process mid-run, resume, compare.

In ``sync`` mode with fixed seeds a resumed run must end with exactly the same global
parameters as a run that was never interrupted, and, for strategies with client state
(SCAFFOLD's control variates, Ditto's personal models), the same client state too, even
when the kill lands mid-round, after some participants saved a newer state than the
checkpoint's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import digits_config

from actors.participant import private_state
from actors.participant.participant import Participant
from actors.participant.private_state import PrivateStateError, Rollback
from orchestrator.cluster.specs import participant_specs
from orchestrator.config import load_config
from orchestrator.loop.checkpoint import list_checkpoints, read_latest
from orchestrator.loop.run import Orchestrator
from orchestrator.tools.cli import main
from strategies.types import GlobalState, Instructions

KILL_AFTER = 2  # kill once the checkpoint of aggregation 2 (or later) exists
HANG_GUARD_S = 240.0


def _checkpoint_version(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


def _driver(cfg_path: Path, out: Path) -> subprocess.Popen:
    """The driver in its own process (and process group), to be killed without warning."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.tools.cli", "run", str(cfg_path), "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=env,
    )


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], poll_s: float) -> None:
    """SIGKILL the driver's whole process group once ``ready()`` holds (or the hang guard
    runs out); it must not have exited by itself first."""
    deadline = time.monotonic() + HANG_GUARD_S
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(poll_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]


def _checkpointed(out: Path) -> bool:
    """A checkpoint of aggregation >= KILL_AFTER exists."""
    done = list_checkpoints(out)
    return bool(done) and _checkpoint_version(done[-1]) >= KILL_AFTER


def _mid_round(out: Path, private: Path) -> bool:
    """A checkpoint of aggregation >= KILL_AFTER exists, and a participant has since saved
    its private state after a task the checkpoint does not cover (its round is not over)."""
    if not _checkpointed(out):
        return False
    try:
        ckpt = read_latest(out)
    except FileNotFoundError:  # pruned between listing and reading
        return False
    states = [private_state.load(str(d)) for d in (private / ckpt.run_id).glob("*")]
    return any(s.last_task_id >= ckpt.next_task_id for s in states)


def test_killed_mid_round_resume_rolls_client_state_back_bit_for_bit(ray_session, tmp_path, strategy="scaffold"):
    """SCAFFOLD end to end; Ditto's personal models roll back by the same private state,
    checked in process by the test below."""
    private = tmp_path / "private"
    fast = {"name": "fast", "count": 2, "hosting": "pool", "model": {"name": "mlp", "hidden": [16]},
            "train": {"local_steps": 3, "batch_size": 32, "lr": 0.1}, "resources": {"num_cpus": 0.5}}
    # the slow one lasts ~1 s a task (the wall clock sleeps it out): the fast ones save their
    # state for the round well before it ends, which is where the driver gets killed
    slow = {**fast, "name": "slow", "count": 1, "system": {"simulated_seconds_per_sample": 0.01}}
    raw = digits_config(
        groups=[fast, slow], strategy={"name": strategy}, stop={"max_aggregations": 4},
        checkpoint={"every": 1, "keep": 2, "participant_dir": str(private / "{run_id}" / "{name}")},
    )
    cfg_path = tmp_path / "run.yaml"
    # the killed driver joins the session's Ray, as on a cluster (Ray then ends its job's
    # actors): one of its own would only cost seconds here
    address = ray_session.get_runtime_context().gcs_address
    cfg_path.write_text(yaml.safe_dump(raw | {"ray": {"address": address}}))
    killed = tmp_path / "killed"
    _kill_when(_driver(cfg_path, killed), lambda: _mid_round(killed, private), poll_s=0.02)
    assert _mid_round(killed, private), "not killed mid-round"
    assert not (killed / "summary.json").exists(), "the run finished before it was killed"
    assert len(list_checkpoints(killed)) <= 2  # keep: 2
    run_id = read_latest(killed).run_id

    # resume with only the directory (config read from DIR/config.yaml)
    assert main(["run", "--resume", str(killed), "--quiet"]) == 0
    reference = Orchestrator(load_config(raw), out_dir=tmp_path / "reference")
    reference.run()

    np.testing.assert_array_equal(np.load(killed / "global_params.npy"),
                                  np.load(tmp_path / "reference" / "global_params.npy"))
    for name in ("fast-0", "fast-1", "slow-0"):  # every participant's client state, bit for bit
        resumed = private_state.load(str(private / run_id / name))
        expected = private_state.load(str(private / reference.run_id / name))
        assert resumed.client_state.keys() == expected.client_state.keys() != set()
        for key, value in expected.client_state.items():
            np.testing.assert_array_equal(resumed.client_state[key], value, err_msg=f"{name} {key}")
    history = pd.read_parquet(killed / "history.parquet")
    assert (history.event == "resumed").sum() == 1
    assert history[history.event == "aggregation"].version.tolist() == [1, 2, 3, 4]
    columns = ["task_id", "participant", "loss", "accuracy"]  # Ditto: the personal model's accuracy
    got = history.query("event == 'update'")[columns]  # so nothing counted twice across the kill
    want = reference.history.frame().query("event == 'update'")[columns]
    pd.testing.assert_frame_equal(got.sort_values("task_id").reset_index(drop=True),  # (arrival order varies)
                                  want.sort_values("task_id").reset_index(drop=True))


@pytest.mark.parametrize("strategy", ["scaffold", "ditto"])
def test_a_participant_rolled_back_holds_exactly_the_client_state_it_saved_then(tmp_path, strategy):
    """A participant that trained tasks 0 and 4, restarted and rolled back to before task 4,
    holds bit for bit the client state (control variates, personal model) of one that only
    ever trained task 0; training task 4 again then gives the same state as the first time."""
    config = load_config(digits_config(
        strategy={"name": strategy}, checkpoint={"every": 1, "participant_dir": str(tmp_path / "{name}")}))
    spec = participant_specs(config, "run")[0][0]
    p = Participant(spec)
    state = GlobalState(0, p.initial_parameters(), p.layout)

    def train(participant: Participant, task_id: int) -> dict[str, np.ndarray]:
        participant.train(state, Instructions(task_id=task_id, seed=task_id, rollback_before=0))
        return {k: np.array(v, copy=True) for k, v in participant.private.client_state.items()}

    after_0, after_4 = train(p, 0), train(p, 4)
    assert after_0.keys() == after_4.keys() != set()
    assert any(not np.array_equal(after_0[k], after_4[k]) for k in after_0)  # task 4 moved it
    restarted = Participant(spec)
    restarted.restore_private_state(Rollback(before=4, expected=0))
    for key, value in after_0.items():
        np.testing.assert_array_equal(restarted.private.client_state[key], value, err_msg=key)
    again = train(restarted, 4)
    for key, value in after_4.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_resume_refuses_a_missing_or_older_private_state_naming_participant_and_path(tmp_path):
    config = load_config(digits_config(
        strategy={"name": "scaffold"}, checkpoint={"every": 1, "participant_dir": str(tmp_path / "{name}")}))
    spec = participant_specs(config, "run")[0][0]
    p = Participant(spec)
    state = p.initial_parameters()
    layout = p.layout
    for task_id in (0, 4):
        p.train(GlobalState(0, state, layout), Instructions(task_id=task_id, seed=task_id, rollback_before=0))
    path = private_state.state_path(spec.state_dir)
    fresh = Participant(spec)
    with pytest.raises(PrivateStateError, match=f"{spec.name}.*task 7.*{path}"):  # older than expected
        fresh.restore_private_state(Rollback(before=9, expected=7))
    fresh.restore_private_state(Rollback(before=4, expected=0))  # the checkpoint's version: task 0
    assert fresh.private.last_task_id == 0 and private_state.load(spec.state_dir).last_task_id == 0
    path.unlink()  # a cleared temp directory
    with pytest.raises(PrivateStateError, match=f"{spec.name}.*{path}.*does not exist"):
        Participant(spec).restore_private_state(Rollback(before=4, expected=0))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(digits_config()))
    assert main(["run", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "no checkpoint" in capsys.readouterr().err

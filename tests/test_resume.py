"""Checkpoint and resume for real: SIGKILL a driver process mid-run, resume, compare.

In ``sync`` mode with fixed seeds a resumed run must end with exactly the same global
parameters as a run that was never interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from conftest import digits_config

from orchestrator.checkpoint import list_checkpoints
from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.run import Orchestrator

MAX_AGGREGATIONS = 8
KILL_AFTER = 2  # kill once the checkpoint of aggregation 2 (or later) exists
HANG_GUARD_S = 240.0


def _config(tmp_path: Path) -> dict:
    return digits_config(
        groups=[{
            "name": "site", "count": 3, "model": {"name": "mlp", "hidden": [16]},
            "train": {"local_steps": 3, "batch_size": 32, "lr": 0.1},
            "resources": {"num_cpus": 0.5},
        }],
        stop={"max_aggregations": MAX_AGGREGATIONS},
        checkpoint={"every": 1, "keep": 2, "participant_dir": str(tmp_path / "private" / "{name}")},
    )


def _checkpoint_version(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


def test_sigkilled_sync_run_resumes_to_identical_parameters(ray_session, tmp_path):
    raw = _config(tmp_path)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))

    # the driver in its own process (and process group), killed without warning
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", str(cfg_path), "--out", str(killed), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=env,
    )
    deadline = time.monotonic() + HANG_GUARD_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = list_checkpoints(killed)
            if done and _checkpoint_version(done[-1]) >= KILL_AFTER:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (killed / "summary.json").exists(), "the run finished before it was killed"
    stopped_at = _checkpoint_version(list_checkpoints(killed)[-1])
    assert KILL_AFTER <= stopped_at < MAX_AGGREGATIONS
    assert len(list_checkpoints(killed)) <= 2  # keep: 2

    # resume with only the directory (config read from DIR/config.yaml)
    assert main(["run", "--resume", str(killed), "--quiet"]) == 0

    reference = tmp_path / "reference"
    Orchestrator(load_config(raw), out_dir=reference).run()

    resumed_params = np.load(killed / "global_params.npy")
    np.testing.assert_array_equal(resumed_params, np.load(reference / "global_params.npy"))

    history = pd.read_parquet(killed / "history.parquet")
    assert (history.event == "resumed").sum() == 1
    updates = history[history.event == "update"]
    assert updates.task_id.is_unique  # nothing counted twice across the kill
    assert len(updates) == 3 * MAX_AGGREGATIONS
    assert history[history.event == "aggregation"].version.tolist() == list(range(1, MAX_AGGREGATIONS + 1))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(digits_config()))
    assert main(["run", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "no checkpoint" in capsys.readouterr().err

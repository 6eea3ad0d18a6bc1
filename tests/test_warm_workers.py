"""Pool workers kept warm between the runs of one driver process."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import digits_config
from test_pool import spec

from actors.participant import pool
from actors.participant.pool import NotRegistered, PoolWorker
from orchestrator.cluster.warm_workers import WARM
from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator


def _pooled(workers: int = 2, **train) -> dict:
    raw = digits_config(stop={"max_aggregations": 3})
    raw["groups"][0] |= {"hosting": "pool", "workers": workers}
    raw["groups"][0]["train"] |= train
    return raw


def _run(raw: dict) -> tuple[np.ndarray, set[int]]:
    orch = Orchestrator(load_config(raw))
    orch.run()
    return orch.params.copy(), {m.info["pid"] for m in orch.members.values()}


def test_a_second_run_reuses_the_workers_and_gives_the_same_model(ray_session):
    """Same settings: the same processes serve the second run, which forgot the first
    run's participants (same parameters as a fresh start, bit for bit)."""
    WARM.release()
    first, first_pids = _run(_pooled())
    assert WARM.count() == 2
    second, second_pids = _run(_pooled())
    assert second_pids == first_pids
    np.testing.assert_array_equal(first, second)
    fewer = _pooled()
    fewer["groups"][0]["count"] = 2  # a task thread each instead of two: more threads serve it as well
    assert _run(fewer)[1] == first_pids


def _alive(workers: list) -> list[bool]:
    out = []
    for worker in workers:
        try:
            ray.get(worker.handle.cached.remote(), timeout=30)
            out.append(True)
        except ray.exceptions.RayActorError:
            out.append(False)
    return out


def test_workers_with_other_settings_stay_idle_while_there_is_room_and_go_when_a_run_needs_it(ray_session):
    """A session alternating between two settings keeps both sets warm; a run that needs
    the CPUs idle workers hold gets them: those workers are killed before it starts."""
    WARM.release()
    _, old_pids = _run(_pooled(workers=2))
    old = list(WARM._idle)
    small = _pooled(workers=1) | {"groups": [_pooled(workers=1)["groups"][0] | {"resources": {"num_cpus": 0.25}}]}
    _, small_pids = _run(small)
    assert not small_pids & old_pids  # other resources: a new worker ...
    assert _alive(old) == [True, True] and WARM.count() == 3  # ... beside the idle ones, kept
    assert _run(_pooled(workers=2))[1] == old_pids  # back to the first settings: the same processes

    everything = ray.cluster_resources()["CPU"] - 0.5  # more than is free beside the idle workers
    big = _pooled(workers=1) | {"groups": [_pooled(workers=1)["groups"][0] | {"resources": {"num_cpus": everything}}]}
    idle = list(WARM._idle)
    _run(big)
    assert _alive(idle) == [False] * len(idle)  # killed to make room, not left holding CPUs
    assert WARM.count() == 1
    WARM.release()  # (it holds nearly every CPU)


def test_a_worker_that_was_killed_while_idle_is_replaced(ray_session):
    WARM.release()
    _, old_pids = _run(_pooled(workers=1))
    ray.kill(WARM._idle[0].handle, no_restart=True)
    _, new_pids = _run(_pooled(workers=1))
    assert len(new_pids) == 1 and not new_pids & old_pids


def test_turned_off_every_run_starts_its_own_workers(ray_session):
    WARM.release()
    WARM.enabled = False
    try:
        _, first = _run(_pooled(workers=1))
        assert WARM.count() == 0
        _, second = _run(_pooled(workers=1))
        assert not first & second
    finally:
        WARM.enabled = True


def test_a_reset_worker_forgets_its_participants_and_a_busy_one_says_so(tmp_path, monkeypatch):
    """In this process: after a reset a name is unknown again; with a task still running
    the reset gives up after the grace period and reports the worker unfit."""
    worker = PoolWorker()
    s = spec(0, tmp_path, "fedavg")
    worker.describe(s)
    assert worker.cached() == ["site-0"]
    assert worker.reset() is True
    assert worker.cached() == []
    with pytest.raises(NotRegistered):
        worker.describe("site-0")
    monkeypatch.setattr(pool, "ABANDON_GRACE_S", 0.05)
    worker._busy.add("site-0")  # a task that never ends
    assert worker.reset() is False


VERSION = "from orchestrator.cluster.warm_workers import code_version; print(code_version())"


def test_one_venv_gives_one_code_version_under_either_interpreter_name_and_another_venv_another(tmp_path):
    """The ``fedray`` command runs ``bin/python3``, a notebook ``bin/python``: the same
    environment, so each claims the workers the other left; another venv never does."""
    root = Path(__file__).resolve().parents[1]
    bindir = Path(sys.executable).parent
    names = [bindir / n for n in ("python", "python3") if (bindir / n).exists()]
    if len(names) < 2:
        pytest.skip("this environment has one interpreter name")

    def version(python: Path, env: dict[str, str] | None = None) -> str:
        done = subprocess.run([str(python), "-c", VERSION], cwd=root, capture_output=True, text=True,
                              timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    same = {version(python) for python in names}
    assert len(same) == 1
    venv.create(tmp_path / "other", with_pip=False)  # sees this one's packages only through PYTHONPATH
    paths = os.pathsep.join([str(root), *site.getsitepackages()])
    assert version(tmp_path / "other" / "bin" / "python", {**os.environ, "PYTHONPATH": paths}) not in same

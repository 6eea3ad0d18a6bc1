"""``fedray submit`` against a real Ray head started with ``ray start --head`` on loopback.

The head gets its own ports, its own ``--temp-dir`` and its own auth token
(``RAY_AUTH_MODE=token``), so it never touches another Ray on this machine; it is stopped
by killing its own process group and whatever still runs from its temp dir, never with
a machine-wide ``ray stop``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import digits_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _kill_tree_of(temp_dir: str, pgid: int) -> None:
    """Kill our head's process group, then any process still naming our temp dir."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    time.sleep(2)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="fjobs-", dir="/tmp")
    gcs, dashboard, client, agent_http, agent_grpc, metrics, env_agent = _free_ports(7)
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
         f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={env_agent}", "--num-cpus=2", f"--temp-dir={temp_dir}",
         "--include-dashboard=true", "--disable-usage-stats"],
        env=env, cwd=temp_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, text=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_jobs_api(address, token, head)
        yield {"address": address, "token": token, "env": env, "gcs": f"127.0.0.1:{gcs}"}
    finally:
        _kill_tree_of(temp_dir, head.pid)
        head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_jobs_api(address: str, token: str, head: subprocess.Popen) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + 180  # a hang guard for a loaded 2-core machine
    while time.time() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited:\n{head.stdout.read()}")
        try:
            JobSubmissionClient(address, headers={"authorization": f"Bearer {token}"}).list_jobs()
            return
        except Exception:  # noqa: BLE001 - dashboard still starting
            time.sleep(2)
    raise RuntimeError(f"the Jobs API at {address} did not come up")


def _fedray(args: list[str], env: dict, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "fedray"), *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_submit_runs_on_the_head_and_brings_results_back(ray_head, tmp_path):
    config = digits_config(name="jobtest", stop={"max_aggregations": 3})
    config["groups"][0]["count"] = 2
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "results"

    done = _fedray(["submit", str(path), "--address", ray_head["address"], "--out", str(out)],
                   env=ray_head["env"])

    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted job fedray-jobtest" in done.stdout
    assert "fedray job: running 'jobtest'" in done.stdout  # streamed from the job's logs
    assert "FEDRAY-RESULTS" not in done.stdout  # the results block is not echoed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_aggregations"] == 3
    assert summary["participants"] == 2
    assert 0.0 < summary["final_accuracy"] <= 1.0
    assert (out / "history.parquet").exists()


def test_submit_with_a_wrong_token_is_refused_with_a_clear_error(ray_head, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(digits_config(name="badtoken")))
    env = {**ray_head["env"], "RAY_AUTH_TOKEN": "not-the-token"}

    done = _fedray(["submit", str(path), "--address", ray_head["address"]], env=env, timeout=120)

    assert done.returncode == 1
    assert ray_head["address"] in done.stderr
    assert "Authentication" in done.stderr or "401" in done.stderr or "403" in done.stderr


def test_a_second_run_joining_the_cluster_takes_over_the_first_runs_pool_workers(ray_head, tmp_path):
    """``fedray run --address`` leaves its pool workers on the cluster; the next run of the
    same code serves its participants with those same processes (no start-up). A worker a
    driver holds is never taken from it; ``fedray release --force`` ends it all the same."""
    config = digits_config(name="warmtest", stop={"max_aggregations": 2})
    config["groups"][0] |= {"count": 2, "hosting": "pool", "workers": 1}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    pids = []
    for run in ("first", "second"):
        done = _fedray(["run", str(path), "--address", ray_head["gcs"], "--quiet", "--out", str(tmp_path / run)],
                       env=ray_head["env"])
        assert done.returncode == 0, done.stdout + done.stderr
        info = json.loads((tmp_path / run / "participants.json").read_text())
        pids.append({member["pid"] for member in info.values()})
    assert len(pids[0]) == 1 and pids[1] == pids[0]  # one worker, the same process both times

    # a driver that leased the worker and died without giving it back (as one killed mid-run)
    lease = (f"import ray; from orchestrator.cluster import warm_workers as w; ray.init(address={ray_head['gcs']!r}); "
             "assert all(w._lease(w._named(n), 'dead-driver') for n, _, _ in w.shared_workers())")
    held = subprocess.run([sys.executable, "-c", lease], env=ray_head["env"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert held.returncode == 0, held.stderr
    kept = _fedray(["release", "--address", ray_head["gcs"]], env=ray_head["env"], timeout=120)
    assert "ended 0 idle pool workers" in kept.stdout, kept.stderr  # held: never taken from its driver
    released = _fedray(["release", "--force", "--address", ray_head["gcs"]], env=ray_head["env"], timeout=120)
    assert released.returncode == 0 and "ended 1 pool worker on" in released.stdout, released.stderr

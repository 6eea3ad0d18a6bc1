"""Warm across processes: ``fedray run`` joining a running Ray, against a cold ``fedray run``.

Issue 23's W1 workload (``benchmarks/warm.py``: digits, Dirichlet(0.5), 8 participants on a
pool of 2 workers, MLP 64-128-10, 30 sync FedAvg rounds) as a user runs it, one process
per run, timed from the command to the prompt (process wall), with the peak RSS of the
``fedray`` process (``benchmarks/commands.py``; a running head's workers are not its children):

- ``cold``: ``fedray run W1.yaml``, which starts a local Ray of its own and stops it;
- ``joined, first``: ``fedray run W1.yaml --address ADDR`` on a Ray head this script started
  (``ray start --head`` on free ports, its own temp dir), after ``fedray release`` there, so
  it starts its pool workers and leaves them on the cluster;
- ``joined, warm``: the same command again, taking over the workers the run before left.

Each repeat runs the three in that order, one at a time; the ratio compares medians from
the same sitting. The head's own start (once) is not counted in any row: it is what a
user pays once a day. The final global parameters of every run must be identical.

    python benchmarks/warm_cluster.py [--repeats 3]

Prints one table and writes it, with the command, to ``benchmarks/results/warm_cluster.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml
from commands import local_env, timed  # benchmarks/commands.py
from warm import W1, repeats_table  # the same workload as the in-process benchmark

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(env: dict[str, str]) -> Iterator[str]:
    """A Ray head of this script's own (loopback, free port, own temp dir); its GCS address.
    Stopped by killing its process group and whatever still runs from its temp dir."""
    temp_dir = tempfile.mkdtemp(prefix="fwarm-", dir="/tmp")
    port = _free_port()
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while subprocess.run([str(BIN / "ray"), "status", f"--address={address}"], env=env,
                             capture_output=True).returncode != 0:
            if time.time() > deadline or head.poll() is not None:
                raise RuntimeError("the Ray head did not come up")
            time.sleep(1)
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        time.sleep(2)
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ProcessLookupError):
                if proc.name.isdigit() and temp_dir in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(proc.name), signal.SIGKILL)
        head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def fedray(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Process wall seconds and peak RSS (MB) of ``fedray ARGS``."""
    seconds, peak, _ = timed([str(BIN / "fedray"), *args], env)
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = local_env()
    work = Path(tempfile.mkdtemp(prefix="fwarm-runs-"))
    config = work / "w1.yaml"
    config.write_text(yaml.safe_dump(W1))
    times: dict[str, list[float]] = {"cold": [], "joined, first": [], "joined, warm": []}
    peaks: dict[str, list[float]] = {label: [] for label in times}
    finals = []
    with ray_head(env) as address:
        for repeat in range(args.repeats):
            for label in times:
                out = work / f"{label.replace(', ', '-')}-{repeat}"
                joined = [] if label == "cold" else ["--address", address]
                if label == "joined, first":
                    fedray(["release", "--address", address], env)
                seconds, peak = fedray(["run", str(config), "--quiet", "--out", str(out), *joined], env)
                times[label].append(seconds)
                peaks[label].append(peak)
                finals.append(np.load(out / "global_params.npy"))
    peak_mb = {"peak RSS MB of fedray's process": [f"{max(v):.0f}" for v in peaks.values()]}
    text = repeats_table(times, "cold", finals, "process wall s", peak_mb)
    print(text)
    shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "benchmarks" / "results" / "warm_cluster.md"
    out.write_text(f"`python benchmarks/warm_cluster.py --repeats {args.repeats}`\n\n{text}")


if __name__ == "__main__":
    main()

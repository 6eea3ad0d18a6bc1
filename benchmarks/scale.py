"""Scale: what a user waits for, and the memory Ray takes, from 16 to 10,000 participants.

Each row is one ``fedray run CONFIG`` process, timed from the command to the prompt (Ray's
start-up, the participants' start and the summary included); "first dispatch s" is when
the run loop sent its first task, counted from the orchestrator's start. Its peak memory is the
largest sum, over the samples taken every 0.2 s, of the proportional set size (PSS: shared
pages split between the processes sharing them) of the process and all its descendants,
which are the whole local Ray (GCS, raylet, workers) as well as the driver.

Workloads (the issue's):

- ``demo``: ``fedray run`` with no config (the built-in demo).
- ``100 digits``: digits, Dirichlet(0.5) over 100 participants, MLP 64-128-10, SGD lr
  0.05, 1 epoch of batch 32, 10 per round, 30 rounds; ``hosting: auto``.
- ``1,000 synthetic``: Synthetic(1, 1), softmax regression, 10 per round, 200 rounds.
- ``10,000 FedBuff``: Synthetic(1, 1), FedBuff (buffer 10, 100 in flight), lognormal(1)
  speeds, ``clock: simulated``, 500 aggregations; run twice to compare the
  (participant, version, staleness) sequences of the updates.
- ``1,000 W1 iid``: issue 23's 1,000-participant workload (``benchmarks/peers.py``): digits,
  iid over 1,000, MLP 64-128-10, 10 per round, 30 rounds; at most 1.5 GB for all of Ray.
- ``16 pool`` / ``16 dedicated``: 16 digits participants hosted both ways, same seeds:
  the final parameters must match.

    python benchmarks/scale.py            # every row (~4 min on 2 cores)
    python benchmarks/scale.py --quick    # demo, 100, 1,000 W1 and the 16s only

Prints one table and writes it, with the command, to ``benchmarks/results/scale.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from peers import WORKLOADS, fedray_config  # benchmarks/peers.py: issue 23 W1 workloads
from pipe_table import pipe_table  # benchmarks/pipe_table.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

DIGITS_100 = {
    "name": "digits-100", "seed": 0,
    "dataset": {"name": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5, "min_size": 2}},
    "groups": [{"name": "device", "count": 100, "model": {"name": "mlp", "hidden": [64, 128]},
                "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
                "resources": {"num_cpus": 0.02}}],
    "strategy": {"name": "fedavg"}, "schedule": {"mode": "sync", "clients_per_round": 10},
    "stop": {"max_aggregations": 30},
}
SYNTHETIC = {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "test_fraction": 0.2, "seed": 0}
SOFTMAX = {"model": {"name": "mlp", "hidden": []}, "train": {"local_epochs": 1, "batch_size": 10, "lr": 0.01}}
SYNTHETIC_1K = {
    "name": "synthetic-1k", "seed": 0, "dataset": SYNTHETIC,
    "groups": [{"name": "device", "count": 1000, **SOFTMAX, "resources": {"num_cpus": 1}}],
    "strategy": {"name": "fedavg"}, "schedule": {"mode": "sync", "clients_per_round": 10},
    "stop": {"max_aggregations": 200}, "evaluation": {"every": 20},
}
FEDBUFF_10K = {
    "name": "fedbuff-10k", "seed": 0, "clock": "simulated", "dataset": SYNTHETIC,
    "groups": [{"name": "device", "count": 10_000, **SOFTMAX, "resources": {"num_cpus": 1},
                "system": {"simulated_seconds_per_sample": 0.01,
                           "speed": {"kind": "lognormal", "sigma": 1.0, "seed": 0}}}],
    "strategy": {"name": "fedavg"}, "schedule": {"mode": "buffered", "buffer_size": 10, "concurrency": 100},
    "stop": {"max_aggregations": 500}, "evaluation": {"every": 50},
}


def sixteen(hosting: str) -> dict:
    group = {"name": "site", "count": 16, "model": {"name": "mlp", "hidden": [64, 128]},
             "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05}, "resources": {"num_cpus": 0.125}}
    group |= {"hosting": "pool", "workers": 2} if hosting == "pool" else {"hosting": "dedicated"}
    return {"name": f"sixteen-{hosting}", "seed": 0,
            "dataset": {"name": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
            "groups": [group], "strategy": {"name": "fedavg"}, "schedule": {"mode": "sync"},
            "stop": {"max_aggregations": 10}}


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Ray's GCS, raylet and workers are)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def timed_run(config: dict | None, out: Path) -> tuple[float, float]:
    """Process wall seconds and peak PSS (GB) of ``fedray run`` with ``config``."""
    command = [sys.executable, "-m", "orchestrator.tools.cli", "run", "--quiet", "--out", str(out)]
    if config is not None:
        path = out.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        command.append(str(path))
    peak = 0
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.2):
            peak = max(peak, sum(pss_bytes(p) for p in descendants(process.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-2000:]}")
    return wall, peak / 1e9


def outcome(out: Path) -> tuple[float, pd.DataFrame]:
    history = pd.read_parquet(out / "history.parquet")
    accuracy = history[history.event == "evaluation"].accuracy.iloc[-1]
    return float(accuracy), history


def update_sequence(history: pd.DataFrame) -> list[tuple]:
    updates = history[history.event == "update"]
    return list(zip(updates.participant, updates.version, updates.staleness, strict=True))


def rows(quick: bool, scratch: Path) -> list[dict]:
    table = []

    def run(label: str, config: dict | None, target_s: float | None, target_gb: float | None) -> pd.DataFrame:
        out = scratch / label.replace(" ", "-").replace(",", "")
        wall, peak = timed_run(config, out)
        accuracy, history = outcome(out)
        hosting = history[history.event == "hosting"].detail
        first_dispatch = history[history.event == "dispatch"].wall_time.iloc[0]
        table.append({
            "workload": label, "wall s": round(wall, 1), "target s": target_s,
            "first dispatch s": round(float(first_dispatch), 1),
            "wall / target": round(wall / target_s, 2) if target_s else None,
            "peak GB": round(peak, 2), "target GB": target_gb, "final accuracy": round(accuracy, 4),
            "hosting": hosting.iloc[0].split(" (")[0] if len(hosting) else "",
        })
        print(table[-1], flush=True)
        return history

    run("demo", None, 10.0, None)
    run("100 digits", DIGITS_100, 10.0, 3.0)
    run("1,000 W1 iid", fedray_config(*WORKLOADS["1000iid/10x30"]), None, 1.5)  # issue 23's memory bound
    run("16 pool", sixteen("pool"), None, None)
    run("16 dedicated", sixteen("dedicated"), None, None)
    pooled, dedicated = (np.load(scratch / name / "global_params.npy") for name in ("16-pool", "16-dedicated"))
    # the pool sums its updates in its workers (schedule.sum_in_workers), in another order
    table[-1]["note"] = table[-2]["note"] = (f"same final parameters: {np.array_equal(pooled, dedicated)} "
                                             f"(largest difference {np.abs(pooled - dedicated).max():.1e})")
    if not quick:
        run("1,000 synthetic", SYNTHETIC_1K, 60.0, 3.0)
        first = run("10,000 FedBuff sim", FEDBUFF_10K, None, 4.0)
        second = run("10,000 FedBuff sim (again)", FEDBUFF_10K, None, 4.0)
        same = update_sequence(first) == update_sequence(second)
        table[-1]["note"] = table[-2]["note"] = (
            f"same (participant, version, staleness) sequence: {same} ({len(update_sequence(first))} updates)")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="demo, 100 and 1,000 W1 participants and the 16s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        frame = pd.DataFrame(rows(args.quick, Path(scratch)))
    text = pipe_table(frame.astype(object).fillna(""))
    print(text)
    command = "python benchmarks/scale.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.md").write_text(f"`{command}` ({os.cpu_count()} cores)\n\n{text}\n")


if __name__ == "__main__":
    main()

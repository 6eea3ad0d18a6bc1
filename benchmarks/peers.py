"""fedray beside the peers a user would pick instead, on issue 23's W1 workloads, in one sitting.

W1: digits, an MLP 64-64-128-10 (fedray ``mlp`` with ``hidden: [64, 128]``), SGD lr 0.05 for
one local epoch of batch 32, sync FedAvg; 20% of the rows held out for the final accuracy.

- ``8x30``: 8 participants, Dirichlet(0.5) labels, all 8 every round, 30 rounds;
- ``8x200``: the same for 200 rounds;
- ``100/10x30``: 100 participants, Dirichlet(0.5) (no minimum per participant), 10 a round, 30 rounds;
- ``1000iid/10x30``: 1,000 participants, iid, 10 a round, 30 rounds.

Each cell is a whole command, timed from its start to its exit (process wall, start-up
included), with the peak RSS of its own process (``benchmarks/commands.py``: the Ray
processes of fedray and Flower are not counted, pfl's one process is), one at a time; per
repeat the frameworks alternate workload by workload. fedray is ``fedray run W.yaml
--quiet`` (its own local Ray). pfl-research runs ``benchmarks/peers_pfl.py`` with
``--pfl-python``, which needs ``pfl[pytorch]`` (0.6 pins ``packaging<26``, so a venv of
its own is the easy way); Flower runs ``benchmarks/peers_flower.py`` with
``--flower-python``, which needs ``flwr[simulation]`` (it brings its own Ray, so a venv of
its own too). Both default to this interpreter. This script installs nothing: a peer that
cannot be imported is reported missing, and fedray runs alone. The peers share
``benchmarks/w1.py``'s data and split; fedray's partitions are its own draw from the same
family, not the same rows.

With ``--warm``, after all of that, fedray also runs each workload joining a Ray head this
script starts (``benchmarks/warm_cluster.py``): one untimed run leaves the pool workers
there, then each repeat is timed, as the second ``fedray run --address`` of a day is.

    python benchmarks/peers.py [--repeats 2] [--pfl-python PFL_VENV/bin/python]
        [--flower-python FLOWER_VENV/bin/python] [--only 8x30 ...] [--warm]

Prints one table and writes it, with the command, to ``benchmarks/results/peers.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from commands import byte_compile, local_env, timed  # benchmarks/commands.py, beside this script
from pipe_table import pipe_table
from warm_cluster import ray_head

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

WORKLOADS = {  # name: (participants, per round, rounds, iid)
    "8x30": (8, 8, 30, False),
    "8x200": (8, 8, 200, False),
    "100/10x30": (100, 10, 30, False),
    "1000iid/10x30": (1000, 10, 30, True),
}


def fedray_config(participants: int, per_round: int, rounds: int, iid: bool) -> dict:
    partition = {"kind": "iid"} if iid else {"kind": "dirichlet", "alpha": 0.5, "min_size": 1}  # as pfl's: none
    return {
        "name": "peers-w1", "seed": 0,
        "dataset": {"name": "digits", "partition": partition},
        "groups": [{"name": "site", "count": participants, "model": {"name": "mlp", "hidden": [64, 128]},
                    "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05}}],
        "strategy": {"name": "fedavg"},
        "schedule": {"mode": "sync", "clients_per_round": per_round if per_round < participants else None},
        "evaluation": {"every": rounds},
        "stop": {"max_aggregations": rounds},
    }


def run_fedray(workload: tuple[int, int, int, bool], work: Path, env: dict[str, str],
               address: str | None = None) -> tuple[float, float, float]:
    """Cold (a local Ray of its own), or joining the Ray head at ``address``."""
    config = work / "w1.yaml"
    config.write_text(yaml.safe_dump(fedray_config(*workload)))
    out = work / "fedray-run"
    joined = ["--address", address] if address else []
    seconds, peak, _ = timed([str(BIN / "fedray"), "run", str(config), "--quiet", "--out", str(out), *joined], env)
    return seconds, peak, float(json.loads((out / "summary.json").read_text())["final_accuracy"])


def run_pfl(workload: tuple[int, int, int, bool], python: str, env: dict[str, str]) -> tuple[float, float, float]:
    participants, per_round, rounds, iid = workload
    command = [python, str(ROOT / "benchmarks" / "peers_pfl.py"), "--participants", str(participants),
               "--per-round", str(per_round), "--rounds", str(rounds), *(["--iid"] if iid else [])]
    seconds, peak, stdout = timed(command, env)
    return seconds, peak, float(stdout.strip().splitlines()[-1].split()[-1])


def run_flower(workload: tuple[int, int, int, bool], python: str, env: dict[str, str]) -> tuple[float, float, float]:
    participants, per_round, rounds, iid = workload
    command = [python, str(ROOT / "benchmarks" / "peers_flower.py"), "--participants", str(participants),
               "--per-round", str(per_round), "--rounds", str(rounds), *(["--iid"] if iid else [])]
    seconds, peak, stdout = timed(command, env)
    return seconds, peak, float(next(ln for ln in stdout.splitlines() if ln.startswith("accuracy ")).split()[-1])


def importable(python: str, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pfl-python", default=sys.executable, help="an interpreter with pfl[pytorch]")
    parser.add_argument("--flower-python", default=sys.executable, help="an interpreter with flwr[simulation]")
    parser.add_argument("--only", nargs="*", choices=list(WORKLOADS), help="these workloads only")
    parser.add_argument("--warm", action="store_true",
                        help="also fedray joining a running Ray head, its pool workers left by a run before")
    args = parser.parse_args()
    env = local_env()
    byte_compile()
    peers = {"pfl": importable(args.pfl_python, "pfl.algorithm"), "flower": importable(args.flower_python, "flwr.simulation")}
    missing = [f"pfl-research (not importable by {args.pfl_python})"] if not peers["pfl"] else []
    missing += [f"Flower (not importable by {args.flower_python})"] if not peers["flower"] else []
    work = Path(tempfile.mkdtemp(prefix="fpeers-"))
    names = args.only or list(WORKLOADS)
    cells: dict[str, dict[str, list[tuple[float, float, float]]]] = {
        name: {"fedray": [], **{p: [] for p, ok in peers.items() if ok}} for name in names}
    for name in names:
        for _ in range(args.repeats):
            cells[name]["fedray"].append(run_fedray(WORKLOADS[name], work, env))
            if peers["pfl"]:
                cells[name]["pfl"].append(run_pfl(WORKLOADS[name], args.pfl_python, env))
            if peers["flower"]:
                cells[name]["flower"].append(run_flower(WORKLOADS[name], args.flower_python, env))
    if args.warm:  # after the others: Flower's own Ray must never find this head
        with ray_head(env) as address:
            for name in names:
                run_fedray(WORKLOADS[name], work, env, address)  # leaves its pool workers on the head
                cells[name]["fedray warm"] = [run_fedray(WORKLOADS[name], work, env, address)
                                              for _ in range(args.repeats)]
    rows = []
    for name in names:
        medians = {framework: statistics.median(s for s, _, _ in runs) for framework, runs in cells[name].items()}
        for framework, runs in cells[name].items():
            rows.append({"workload": name, "framework": framework,
                         "process wall s (each repeat)": " / ".join(f"{s:.1f}" for s, _, _ in runs),
                         "median s": medians[framework], "fedray / it": medians["fedray"] / medians[framework],
                         **({"fedray warm / it": medians["fedray warm"] / medians[framework]} if args.warm else {}),
                         "peak RSS MB": f"{max(m for _, m, _ in runs):.0f}",
                         "final accuracy": statistics.median(a for _, _, a in runs)})
    table = pd.DataFrame(rows)
    text = pipe_table(table, lambda _, v: f"{v:.2f}" if isinstance(v, float) else str(v))
    text += ("\n\nnot run: " + "; ".join(missing) if missing else "") + "\n"
    print(text)
    only = (f" --only {' '.join(args.only)}" if args.only else "") + (" --warm" if args.warm else "")
    (ROOT / "benchmarks" / "results" / "peers.md").write_text(
        f"`python benchmarks/peers.py --repeats {args.repeats}{only} --pfl-python PFL_VENV/bin/python "
        f"--flower-python FLOWER_VENV/bin/python`\n\n{text}")


if __name__ == "__main__":
    main()

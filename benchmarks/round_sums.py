"""One call per pool worker per round, its updates summed there, against one call per task.

Issue 23's W1 workloads (``benchmarks/peers.py``) as whole ``fedray run W.yaml --quiet``
commands, each with ``schedule.sum_in_workers`` on (the default) and off, alternating
within each repeat. Two times per run: the process wall from the command to its exit
(start-up included, what a user waits for) and the rounds alone (the history's first
dispatch to its stop), where the calls saved show. Both settings must end at the same
parameters up to float rounding; the table gives the largest difference.

    python benchmarks/round_sums.py [--repeats 2] [--only 8x200]

Prints one table and writes it, with the command, to ``benchmarks/results/round_sums.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from commands import local_env, timed  # benchmarks/commands.py, beside this script
from peers import WORKLOADS, fedray_config
from pipe_table import pipe_table

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(workload: tuple[int, int, int, bool], sums: bool, work: Path, env: dict[str, str]
        ) -> tuple[float, float, float, np.ndarray]:
    """Process wall s, rounds wall s, peak RSS MB of the ``fedray`` process, final parameters."""
    config = fedray_config(*workload)
    config["schedule"]["sum_in_workers"] = sums
    path = work / f"w-{sums}.yaml"
    path.write_text(yaml.safe_dump(config))
    out = work / f"out-{sums}"
    seconds, peak, _ = timed([str(BIN / "fedray"), "run", str(path), "--quiet", "--out", str(out)], env)
    history = pd.read_parquet(out / "history.parquet")
    rounds = history.wall_time[history.event == "stop"].iloc[0] - history.wall_time[history.event == "dispatch"].min()
    return seconds, float(rounds), peak, np.load(out / "global_params.npy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=list(WORKLOADS), help="these workloads only")
    args = parser.parse_args()
    env = local_env()
    work = Path(tempfile.mkdtemp(prefix="fsums-"))
    rows = []
    for name in args.only or WORKLOADS:
        cells: dict[bool, list[tuple[float, float, float, np.ndarray]]] = {True: [], False: []}
        for _ in range(args.repeats):
            for sums in (False, True):
                cells[sums].append(run(WORKLOADS[name], sums, work, env))
        finals = [c[3] for runs in cells.values() for c in runs]
        median = {sums: [statistics.median(c[i] for c in runs) for i in range(3)] for sums, runs in cells.items()}
        rows.append({
            "workload": name,
            "per task: process s / rounds s": f"{median[False][0]:.2f} / {median[False][1]:.2f}",
            "summed: process s / rounds s": f"{median[True][0]:.2f} / {median[True][1]:.2f}",
            "summed / per task, process": median[True][0] / median[False][0],
            "summed / per task, rounds": median[True][1] / median[False][1],
            "peak MB per task / summed": f"{median[False][2]:.0f} / {median[True][2]:.0f}",
            "max param difference": float(max(np.abs(f - finals[0]).max() for f in finals)),
        })
    table = pd.DataFrame(rows)
    text = pipe_table(table, lambda c, v: (f"{v:.1e}" if c.startswith("max") else f"{v:.2f}")
                      if isinstance(v, float) else str(v))
    print(text)
    only = f" --only {' '.join(args.only)}" if args.only else ""
    (ROOT / "benchmarks" / "results" / "round_sums.md").write_text(
        f"`python benchmarks/round_sums.py --repeats {args.repeats}{only}`\n\n{text}\n")


if __name__ == "__main__":
    main()

"""Warm pool workers: the second pooled run in one driver process, with and without reuse.

One Python process, one local Ray (``ray.init(num_cpus=2)``), the W1 workload of issue 23
(digits, Dirichlet(0.5), 8 participants on a pool of 2 workers, MLP 64-128-10, SGD lr
0.05, 1 local epoch of batch 32, sync FedAvg, 30 rounds). Each repeat runs it three times,
one after the other, and times ``Orchestrator(...).run()`` by the wall clock:

- ``fills the pool``: reuse on; starts its own workers (or takes the last repeat's) and
  keeps them at the end;
- ``warm``: reuse on; claims the workers the run before it kept;
- ``no reuse``: ``WARM.enabled = False`` after ``WARM.release()``; starts its own workers
  and kills them at the end, as every run did before workers were kept.

The ratio compares the medians of ``warm`` and ``no reuse`` from the same sitting. The
final global parameters of every run must be identical (same seeds): a kept worker that
remembered anything of its last run would change them.

    python benchmarks/warm.py [--repeats 3]

Prints one table and writes it, with the command, to ``benchmarks/results/warm.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import ray
from pipe_table import pipe_table  # benchmarks/pipe_table.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.cluster.warm_workers import WARM  # noqa: E402
from orchestrator.config import load_config  # noqa: E402
from orchestrator.loop.run import Orchestrator  # noqa: E402

W1 = {
    "name": "warm-w1", "seed": 0,
    "dataset": {"name": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
    "groups": [{"name": "site", "count": 8, "hosting": "pool", "workers": 2,
                "model": {"name": "mlp", "hidden": [64, 128]},
                "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
                "resources": {"num_cpus": 1}}],
    "strategy": {"name": "fedavg"}, "schedule": {"mode": "sync"},
    "stop": {"max_aggregations": 30},
}


def repeats_table(times: dict[str, list[float]], baseline: str, finals: list[np.ndarray], unit: str,
                  extra: dict[str, list[str]] | None = None) -> str:
    """A row per way of running: each repeat's ``unit``, the median, the ratio of medians to
    ``baseline``'s (``extra``: more columns), and whether every run ended on the same
    parameters; as printed and written by the warm benchmarks."""
    table = pd.DataFrame({
        "run": list(times),
        f"{unit} (each repeat)": [" / ".join(f"{s:.2f}" for s in v) for v in times.values()],
        "median s": [statistics.median(v) for v in times.values()],
        **(extra or {}),
    })
    table[f"vs {baseline}"] = table["median s"] / statistics.median(times[baseline])
    same = all(np.array_equal(finals[0], p) for p in finals[1:])
    text = pipe_table(table, lambda _, v: f"{v:.2f}" if isinstance(v, float) else str(v))
    return text + f"\n\nfinal parameters identical across all {len(finals)} runs: {same}\n"


def timed_run(reuse: bool) -> tuple[float, np.ndarray]:
    WARM.enabled = reuse
    if not reuse:
        WARM.release()
    orchestrator = Orchestrator(load_config(W1))
    start = time.perf_counter()
    orchestrator.run()
    return time.perf_counter() - start, orchestrator.params.copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    times: dict[str, list[float]] = {"fills the pool": [], "warm": [], "no reuse": []}
    finals = []
    for _ in range(args.repeats):
        for label, reuse in (("fills the pool", True), ("warm", True), ("no reuse", False)):
            seconds, params = timed_run(reuse)
            times[label].append(seconds)
            finals.append(params)
    WARM.release()
    ray.shutdown()
    text = repeats_table(times, "no reuse", finals, "seconds")
    print(text)
    out = ROOT / "benchmarks" / "results" / "warm.md"
    out.write_text(f"`python benchmarks/warm.py --repeats {args.repeats}`\n\n{text}")


if __name__ == "__main__":
    main()

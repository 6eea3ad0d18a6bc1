"""Aggregation throughput: GB/s of update data consumed by FedAvg, FedAdam and Median.

Reference: a plain ``np.mean(stack, axis=0)`` over the very same pre-stacked matrix. The
strategies get the rows of that matrix as their updates' payloads (views, no copy), so
every method reads identical bytes. All methods are timed side by side, interleaved in
each repeat, and each cell is the best of ``--repeats``: the machine is shared and noisy,
so compare the ratios within one run, not numbers across runs.

    python benchmarks/aggregation.py                      # 10/100 participants x 1M/10M
    python benchmarks/aggregation.py --participants 10 --params 1000000 --repeats 2

Writes the table and the command to ``benchmarks/results/aggregation.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from strategies.fedavg import FedAvg
from strategies.fedopt import FedAdam
from strategies.robust import Median
from strategies.types import Layout, Update

RESULTS = Path(__file__).parent / "results" / "aggregation.md"


def measure(n: int, size: int, repeats: int, median_repeats: int) -> dict[str, float]:
    """Seconds per aggregation for each method on one ``n x size`` float32 batch."""
    rng = np.random.default_rng(0)
    stack = np.empty((n, size), dtype=np.float32)
    for row in stack:  # row by row: no float64 temporary of the whole stack
        row[...] = rng.standard_normal(size, dtype=np.float32)
    layout = Layout(("w",), ((size,),))
    updates = [Update(f"p{i}", 0, "delta", stack[i], layout, 100) for i in range(n)]
    x = np.zeros(size, dtype=np.float32)
    fedavg, fedadam, median = FedAvg(), FedAdam(), Median()
    methods: dict[str, Callable[[], object]] = {
        "np.mean": lambda: np.mean(stack, axis=0),
        "FedAvg": lambda: fedavg.aggregate(x, updates),
        "FedAdam": lambda: fedadam.aggregate(x, updates),
        "Median": lambda: median.aggregate(x, updates),
    }
    reps = {name: median_repeats if name == "Median" else repeats for name in methods}
    seconds = {name: float("inf") for name in methods}
    for rep in range(max(reps.values())):  # interleaved, so all methods share the noise
        for name, fn in methods.items():
            if rep < reps[name]:
                start = time.perf_counter()
                fn()
                seconds[name] = min(seconds[name], time.perf_counter() - start)
    seconds["bytes"] = float(stack.nbytes)
    return seconds  # the stack is freed on return, before the next size is built


def _memory_gb() -> str:
    try:
        return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9:.0f}"
    except (ValueError, OSError, AttributeError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--median-repeats", type=int, default=2, help="Median is slow; fewer repeats")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    header = ("| participants | parameters | update data (GB) | np.mean GB/s | FedAvg GB/s "
              "| FedAvg time / np.mean time | FedAdam GB/s | Median GB/s |")
    lines = [header, "|" + "---|" * 8]
    load_before = os.getloadavg()[0]
    for n in args.participants:
        for size in args.params:
            s = measure(n, size, args.repeats, args.median_repeats)
            gb = s["bytes"] / 1e9

            def rate(name: str, gb: float = gb, s: dict = s) -> str:
                return f"{gb / s[name]:.2f}"

            lines.append(
                f"| {n} | {size:,} | {gb:.2f} | {rate('np.mean')} | {rate('FedAvg')} "
                f"| {s['FedAvg'] / s['np.mean']:.2f}x | {rate('FedAdam')} | {rate('Median')} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)  # progress: big sizes take a while
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        command = "python benchmarks/aggregation.py " + " ".join(map(shlex.quote, argv or sys.argv[1:]))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            "# Aggregation throughput\n\n"
            f"Command (from the repository root):\n\n```\n{command.strip()}\n```\n\n"
            "GB/s of update data consumed (participants x parameters x 4 bytes per second); "
            f"best of {args.repeats} interleaved repeats ({args.median_repeats} for Median). "
            "np.mean is `np.mean(stack, axis=0)` over the same pre-stacked float32 matrix.\n\n"
            f"{table}\n\n"
            f"Machine: {os.cpu_count()} CPUs, {_memory_gb()} GB RAM; 1-minute load average "
            f"{load_before:.1f} when the run started and {os.getloadavg()[0]:.1f} when it ended "
            "(other jobs share the machine: absolute GB/s vary, ratios within a row hold).\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

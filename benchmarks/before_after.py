"""The same ``fedray run`` commands from an earlier commit and from this checkout, side by side.

A change meant to make fedray faster is judged on whole commands, as a user waits for them,
in one sitting (this machine's speed drifts by the hour): ``--base REV`` is checked out into
a temporary git worktree, and each workload runs as ``python -m orchestrator.tools.cli run
CONFIG --quiet`` there (``PYTHONPATH`` and the working directory pointing at it, so its Ray
workers import it too) and here, alternating, each side starting its own local Ray. Workloads:
the built-in demo and two of issue 23's W1 runs (``benchmarks/peers.py``). Both sides must
end at the same final accuracy.

    python benchmarks/before_after.py --base a425a94 [--repeats 3]

Prints one table and writes it, with the command, to ``benchmarks/results/before_after.md``.
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
from commands import ROOT, byte_compile, local_env, timed  # benchmarks/commands.py
from peers import WORKLOADS, fedray_config
from pipe_table import pipe_table

RUNS = {"demo": None, "8x30": WORKLOADS["8x30"], "1000iid/10x30": WORKLOADS["1000iid/10x30"]}


def run(checkout: Path, workload: tuple[int, int, int, bool] | None, work: Path,
        env: dict[str, str]) -> tuple[float, float, float]:
    """Process wall s, peak RSS MB of the command's own process, final accuracy."""
    config = []
    if workload is not None:
        path = work / "w1.yaml"
        path.write_text(yaml.safe_dump(fedray_config(*workload)))
        config = [str(path)]
    out = work / "out"
    seconds, peak, _ = timed([sys.executable, "-m", "orchestrator.tools.cli", "run", *config, "--quiet",
                              "--out", str(out)], env | {"PYTHONPATH": str(checkout)}, cwd=checkout)
    return seconds, peak, float(json.loads((out / "summary.json").read_text())["final_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier commit")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = local_env()
    work = Path(tempfile.mkdtemp(prefix="fbefore-"))
    base = work / "base"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.base], cwd=ROOT, check=True)
    byte_compile(base), byte_compile(ROOT)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    dirty = " (with uncommitted changes)" if subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode else ""
    rows = []
    try:
        for name, workload in RUNS.items():
            cells: dict[str, list[tuple[float, float, float]]] = {"before": [], "after": []}
            for _ in range(args.repeats):
                cells["before"].append(run(base, workload, work, env))
                cells["after"].append(run(ROOT, workload, work, env))
            median = {side: statistics.median(s for s, _, _ in runs) for side, runs in cells.items()}
            rows.append({
                "workload": name,
                "before s (each repeat)": " / ".join(f"{s:.1f}" for s, _, _ in cells["before"]),
                "after s (each repeat)": " / ".join(f"{s:.1f}" for s, _, _ in cells["after"]),
                "median before s": median["before"], "median after s": median["after"],
                "after / before": median["after"] / median["before"],
                "peak RSS MB before / after": " / ".join(f"{max(m for _, m, _ in runs):.0f}" for runs in cells.values()),
                "same accuracy": len({a for runs in cells.values() for _, _, a in runs}) == 1,
            })
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    text = pipe_table(pd.DataFrame(rows), lambda _, v: f"{v:.2f}" if isinstance(v, float) else str(v))
    text = f"before: {args.base}; after: {head}{dirty}\n\n{text}"
    print(text)
    (ROOT / "benchmarks" / "results" / "before_after.md").write_text(
        f"`python benchmarks/before_after.py --base {args.base} --repeats {args.repeats}`\n\n{text}\n")


if __name__ == "__main__":
    main()

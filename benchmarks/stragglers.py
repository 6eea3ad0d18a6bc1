"""Stragglers: time to a target accuracy under sync FedAvg, sync with a deadline and
over-selection, FedBuff and FedAsync, on one fleet with heavy-tailed speeds.

Workload (the same for every schedule): scikit-learn digits, 16 participants with
Dirichlet(0.5) label skew, one small MLP, one local epoch per task. Speeds are drawn once
from a lognormal with sigma=1 (``system.speed: {kind: lognormal, sigma: 1, seed: ...}``)
and every task lasts ``samples * simulated_seconds_per_sample / speed`` inside the
participant, so who is slow, and by how much, does not depend on how loaded this machine
is. All four runs share one Ray instance in one process and stop at the same target
accuracy (with ``max_wall_s`` as a guard). Time is measured from the run's first dispatch,
so starting the 16 actors (importing torch) is not counted against any schedule; a second
column counts from the first accepted update, which also leaves out each participant's
first-task warm-up (torch's lazy initialisation, tens of seconds on an overloaded machine).

    python benchmarks/stragglers.py                    # the full comparison (~4 min)
    python benchmarks/stragglers.py --target 0.85      # a quicker look

Prints one table and writes it, with the command, to ``benchmarks/results/stragglers.md``
and a plot of accuracy against wall time to ``benchmarks/results/stragglers.png``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402

from actors.spec import SpeedDistribution  # noqa: E402
from actors.system import draw_speeds  # noqa: E402
from orchestrator.config import RunConfig, load_config  # noqa: E402
from orchestrator.run import Orchestrator  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PARTICIPANTS = 16


def schedules(deadline_s: float) -> dict[str, tuple[dict, dict]]:
    """Each schedule's ``schedule:`` block and its ``strategy:`` block."""
    fedavg = {"name": "fedavg"}
    return {
        "sync FedAvg": ({"mode": "sync"}, fedavg),
        "sync deadline+over-select": (
            {"mode": "sync", "clients_per_round": 8, "over_select": 0.5,
             "deadline_s": deadline_s, "late_updates": "drop"},
            fedavg,
        ),
        "FedBuff": (
            {"mode": "buffered", "concurrency": 16, "buffer_size": 4,
             "staleness": {"kind": "polynomial", "a": 0.5}},
            fedavg,
        ),
        "FedAsync": (
            {"mode": "async", "concurrency": 16, "alpha": 0.6,
             "staleness": {"kind": "polynomial", "a": 0.5}},
            fedavg,
        ),
    }


def workload(args: argparse.Namespace, schedule: dict, strategy: dict) -> RunConfig:
    return load_config({
        "name": "stragglers",
        "seed": args.seed,
        "dataset": {"name": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "groups": [{
            "name": "site",
            "count": PARTICIPANTS,
            "model": {"name": "mlp", "hidden": [64]},
            "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.1},
            "resources": {"num_cpus": 0.25},
            "system": {
                "speed": {"kind": "lognormal", "sigma": 1.0, "seed": args.speed_seed},
                "simulated_seconds_per_sample": args.seconds_per_sample,
            },
        }],
        "strategy": strategy,
        "schedule": schedule,
        "stop": {"target_accuracy": args.target, "max_wall_s": args.max_wall,
                 "max_aggregations": 100_000},
        "evaluation": {"every": 1},
    })


@dataclass
class Outcome:
    name: str
    curve: pd.DataFrame  # time since first dispatch, accuracy
    to_target: float | None
    warm_to_target: float | None  # from the first accepted update: excludes first-task warm-up
    updates: int
    aggregations: int
    final_accuracy: float
    mean_staleness: float
    real_s: float  # mean real seconds of local work per accepted task
    simulated_s: float  # mean seconds a task appeared to take


def measure(name: str, history: pd.DataFrame, target: float) -> Outcome:
    start = history.loc[history.event == "dispatch", "time"].min()
    evals = history[history.event == "evaluation"]
    curve = pd.DataFrame({"time": (evals.time - start).clip(lower=0.0), "accuracy": evals.accuracy})
    hit = evals[evals.accuracy >= target]
    to_target = float(hit.time.iloc[0] - start) if len(hit) else None
    updates = history[history.event == "update"]
    first_update = updates.time.min()
    warm = float(hit.time.iloc[0] - first_update) if len(hit) and len(updates) else None
    if to_target is not None:
        updates = updates[updates.time - start <= to_target]
    return Outcome(
        name=name, curve=curve, to_target=to_target, warm_to_target=warm, updates=len(updates),
        aggregations=int((history.event == "aggregation").sum()),
        final_accuracy=float(evals.accuracy.iloc[-1]),
        mean_staleness=float(updates.staleness.mean()) if len(updates) else 0.0,
        real_s=float(updates.train_seconds.mean()), simulated_s=float(updates.simulated_seconds.mean()),
    )


def table(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    sync = outcomes[0].to_target
    lines = [
        "| schedule | wall s to target | speed-up vs sync | s to target after 1st update "
        "| speed-up (after 1st update) | aggregations | updates used "
        "| final accuracy | mean staleness | real s/task | simulated s/task |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        reached = f"{o.to_target:.1f}" if o.to_target is not None else f"not reached in {args.max_wall:g}"
        ratio = f"{sync / o.to_target:.2f}x" if sync and o.to_target else "n/a"
        warm_sync = outcomes[0].warm_to_target
        warm = f"{o.warm_to_target:.1f}" if o.warm_to_target is not None else "n/a"
        warm_ratio = f"{warm_sync / o.warm_to_target:.2f}x" if warm_sync and o.warm_to_target else "n/a"
        lines.append(
            f"| {o.name} | {reached} | {ratio} | {warm} | {warm_ratio} | {o.aggregations} | {o.updates} | "
            f"{o.final_accuracy:.4f} | {o.mean_staleness:.2f} | {o.real_s:.3f} | {o.simulated_s:.3f} |"
        )
    return "\n".join(lines)


def plot(outcomes: list[Outcome], args: argparse.Namespace, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for o in outcomes:
        ax.plot(o.curve.time, o.curve.accuracy, label=o.name, drawstyle="steps-post")
    ax.axhline(args.target, color="grey", linestyle=":", label=f"target {args.target:g}")
    ax.set_xlabel("wall seconds since first dispatch")
    ax.set_ylabel("test accuracy of the global model")
    ax.set_title(f"digits, {PARTICIPANTS} participants, lognormal(sigma=1) speeds")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.90, help="test accuracy to reach")
    parser.add_argument("--max-wall", type=float, default=90.0, help="guard per schedule, seconds")
    parser.add_argument("--seconds-per-sample", type=float, default=0.0005,
                        help="simulated seconds per training sample at speed 1")
    parser.add_argument("--deadline", type=float, default=None,
                        help="deadline_s of the deadline schedule (default: median task time x 2)")
    parser.add_argument("--speed-seed", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="run only these schedules")
    args = parser.parse_args(argv)

    speeds = draw_speeds(SpeedDistribution(kind="lognormal", sigma=1.0, seed=args.speed_seed), PARTICIPANTS)
    typical_task = args.seconds_per_sample * 1437 / PARTICIPANTS  # one epoch of a mean shard
    deadline = args.deadline or round(2 * typical_task / float(np.median(speeds)), 2)
    print(f"slowdowns vs the fastest: median {np.median(1 / speeds):.1f}x, slowest "
          f"{(1 / speeds).max():.1f}x; deadline {deadline}s", flush=True)

    ray.init(address="local", num_cpus=PARTICIPANTS, include_dashboard=False, logging_level="WARNING")
    outcomes = []
    try:
        for name, (schedule, strategy) in schedules(deadline).items():
            if args.only and name not in args.only:
                continue
            history = Orchestrator(workload(args, schedule, strategy)).run()
            outcomes.append(measure(name, history, args.target))
            o = outcomes[-1]
            print(f"  {name}: to target {o.to_target}, final {o.final_accuracy:.4f}", flush=True)
    finally:
        ray.shutdown()

    text = table(outcomes, args)
    by_name = {o.name: o for o in outcomes}
    summary = ""
    if "sync FedAvg" in by_name and "FedBuff" in by_name:
        sync, buff = by_name["sync FedAvg"], by_name["FedBuff"]
        if sync.to_target and buff.to_target:
            summary = (f"sync/FedBuff time to {args.target:g}: {sync.to_target / buff.to_target:.2f}x; "
                       f"final accuracy difference {100 * (buff.final_accuracy - sync.final_accuracy):+.2f} points")
            if sync.warm_to_target and buff.warm_to_target:
                summary += (f"; counted from each run's first accepted update: "
                            f"{sync.warm_to_target / buff.warm_to_target:.2f}x")
    print()
    print(text)
    if summary:
        print(summary)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(outcomes, args, RESULTS / "stragglers.png")
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    (RESULTS / "stragglers.md").write_text(
        "# stragglers\n\n"
        f"Target accuracy {args.target:g}; {PARTICIPANTS} participants, Dirichlet(0.5), "
        f"lognormal(sigma=1, seed={args.speed_seed}) speeds, "
        f"{args.seconds_per_sample:g} simulated s/sample, deadline {deadline}s. "
        "Final accuracy is the global model's accuracy when the run stopped (at the target, "
        "or at the max_wall_s guard).\n\n"
        f"{text}\n\n{summary}\n\nCommand:\n\n    {command}\n\nPlot: `stragglers.png`\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Stragglers: time to a target accuracy under sync FedAvg, sync with a deadline and
over-selection, FedBuff and FedAsync, on one fleet with heavy-tailed speeds.

Workload (the same for every schedule): scikit-learn digits, 16 participants with
Dirichlet(0.5) label skew, one small MLP, one local epoch per task. Speeds are drawn once
from a lognormal with sigma=1 (``system.speed: {kind: lognormal, sigma: 1, seed: ...}``)
and every task lasts ``samples * simulated_seconds_per_sample / speed``. All four runs
share one Ray instance in one process and stop at the same target accuracy.

``--clock simulated`` (the default) runs each schedule under ``clock: simulated``: a
task's duration is fixed by the system model when it is dispatched, the driver handles
results in simulated-time order, and nobody sleeps. Time to target is then counted in
simulated seconds (the history's ``time``), so the comparison is the same on a quiet and
on a loaded machine, for given seeds, to the last digit, as long as every participant
starts (actors get a real-time start-up timeout; on a badly overloaded machine some may
miss it and the run goes on with a smaller fleet: a warning under the table names such a
run, whose row then compares a different fleet). The guard is a number of accepted
updates (``--max-updates``), which means the same thing on any machine, with a generous
real-time guard (``--max-wall``) behind it in case a run hangs. The table also shows the
real seconds each run took: those depend on the machine and its load, and they show what
a simulation costs, not how fast a schedule is.

``--clock wall`` keeps the deployment-like check: participants really sleep out their
task's duration, time is real seconds and the guard is ``--max-wall``, so the result
depends on how loaded the machine is (on a busy machine sync FedAvg has made no
aggregation at all within 90 s). Time is counted from each run's first dispatch, so
starting the 16 actors (importing torch) is not counted against any schedule; under the
wall clock a second column counts from the first accepted update, which also leaves out
each participant's first-task warm-up (torch's lazy initialisation, tens of seconds on an
overloaded machine).

    python benchmarks/stragglers.py                    # simulated clock (~2 min, 2 cores)
    python benchmarks/stragglers.py --target 0.85      # a quicker look
    python benchmarks/stragglers.py --clock wall --max-wall 200   # real sleeping, ~4 min

Prints one table and writes it, with the command, the machine's core count and its load
average, to ``benchmarks/results/stragglers.md`` (``stragglers_wall.md`` under the wall
clock; ``--tag loaded`` appends ``_loaded``) and a plot of accuracy against the run's
clock to the ``.png`` of the same name.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402

from actors.participant.system import draw_speeds  # noqa: E402
from actors.spec.system import SpeedDistribution
from orchestrator.config import RunConfig, load_config  # noqa: E402
from orchestrator.loop.run import Orchestrator  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PARTICIPANTS = 16
MAX_WALL_S = {"wall": 90.0, "simulated": 900.0}
"""Default real-time guard per run, starting the actors included. Under the wall clock it
is the guard; under the simulated clock only a safety net (a run took 20-25 s on a quiet
2-core machine and up to about 370 s on an overloaded one, mostly starting actors)."""


def schedules(deadline_s: float) -> dict[str, tuple[dict, dict]]:
    """Each schedule's ``schedule:`` block and its ``strategy:`` block. ``deadline_s`` is in
    the run's clock's seconds (simulated seconds under the simulated clock)."""
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
        "clock": args.clock,
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
        # updates mean the same on any machine; max_wall_s is real seconds under either clock
        "stop": {"target_accuracy": args.target, "max_wall_s": args.max_wall,
                 "max_updates": args.max_updates, "max_aggregations": 100_000},
        "evaluation": {"every": 1},
    })


@dataclass
class Outcome:
    name: str
    curve: pd.DataFrame  # the run's clock since first dispatch, accuracy
    to_target: float | None  # by the run's clock (simulated seconds under the simulated clock)
    wall_to_target: float | None  # real seconds, from the first dispatch
    warm_to_target: float | None  # from the first accepted update: excludes first-task warm-up
    run_wall_s: float  # real seconds of the whole run, starting the actors included
    stop: str
    not_started: list[str]  # participants that failed to start: a smaller fleet, not comparable
    updates: int
    aggregations: int
    final_accuracy: float
    mean_staleness: float
    real_s: float  # mean real seconds of local work per accepted task
    simulated_s: float  # mean seconds a task appeared to take


def measure(name: str, history: pd.DataFrame, target: float, run_wall_s: float) -> Outcome:
    dispatches = history[history.event == "dispatch"]
    # start-up failures are recorded before the first dispatch (e.g. an actor that did not
    # start within the orchestrator's real-time start-up timeout on an overloaded machine)
    early = history.loc[: dispatches.index.min()]
    not_started = sorted(early.loc[early.event == "failure", "participant"].dropna().unique())
    start, wall_start = dispatches.time.min(), dispatches.wall_time.min()
    evals = history[history.event == "evaluation"]
    curve = pd.DataFrame({"time": (evals.time - start).clip(lower=0.0), "accuracy": evals.accuracy})
    hit = evals[evals.accuracy >= target]
    to_target = float(hit.time.iloc[0] - start) if len(hit) else None
    wall_to_target = float(hit.wall_time.iloc[0] - wall_start) if len(hit) else None
    updates = history[history.event == "update"]
    first_update = updates.time.min()
    warm = float(hit.time.iloc[0] - first_update) if len(hit) and len(updates) else None
    if to_target is not None:
        updates = updates[updates.time - start <= to_target]
    stops = history.loc[history.event == "stop", "detail"]
    return Outcome(
        name=name, curve=curve, to_target=to_target, wall_to_target=wall_to_target,
        warm_to_target=warm, run_wall_s=run_wall_s, stop=str(stops.iloc[-1]) if len(stops) else "?",
        not_started=not_started,
        updates=len(updates), aggregations=int((history.event == "aggregation").sum()),
        final_accuracy=float(evals.accuracy.iloc[-1]),
        mean_staleness=float(updates.staleness.mean()) if len(updates) else 0.0,
        real_s=float(updates.train_seconds.mean()), simulated_s=float(updates.simulated_seconds.mean()),
    )


def _seconds(value: float | None, missing: str = "n/a", digits: int = 1) -> str:
    return f"{value:.{digits}f}" if value is not None else missing


def _speed_up(sync: float | None, value: float | None) -> str:
    return f"{sync / value:.2f}x" if sync and value else "n/a"


def table(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    """One row per schedule. Under the simulated clock the simulated columns come first and
    the wall columns beside them, each with its ratio to sync FedAvg, so the load-independent
    result and what the machine made of it can be read side by side."""
    sync = outcomes[0]

    def unreached(o: Outcome) -> str:
        return f"not reached ({o.stop})"

    columns: list[tuple[str, Callable[[Outcome], str]]]
    if args.clock == "simulated":
        columns = [
            ("simulated s to target", lambda o: _seconds(o.to_target, unreached(o))),
            ("speed-up vs sync (simulated)", lambda o: _speed_up(sync.to_target, o.to_target)),
            ("wall s to target", lambda o: _seconds(o.wall_to_target, digits=2)),
            ("speed-up vs sync (wall)", lambda o: _speed_up(sync.wall_to_target, o.wall_to_target)),
            ("wall s of whole run", lambda o: f"{o.run_wall_s:.1f}"),
        ]
    else:
        columns = [
            ("wall s to target", lambda o: _seconds(o.to_target, unreached(o))),
            ("speed-up vs sync", lambda o: _speed_up(sync.to_target, o.to_target)),
            ("s to target after 1st update", lambda o: _seconds(o.warm_to_target)),
            ("speed-up (after 1st update)", lambda o: _speed_up(sync.warm_to_target, o.warm_to_target)),
        ]
    columns += [
        ("aggregations", lambda o: str(o.aggregations)),
        ("updates used", lambda o: str(o.updates)),
        ("final accuracy", lambda o: f"{o.final_accuracy:.4f}"),
        ("mean staleness", lambda o: f"{o.mean_staleness:.2f}"),
        ("real s/task", lambda o: f"{o.real_s:.3f}"),
        ("simulated s/task", lambda o: f"{o.simulated_s:.3f}"),
    ]
    lines = [
        "| schedule | " + " | ".join(header for header, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for o in outcomes:
        lines.append(f"| {o.name} | " + " | ".join(cell(o) for _, cell in columns) + " |")
    return "\n".join(lines)


def summary(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    """The headline ratio, and a warning for every run whose fleet was not the full one:
    its row then compares a different fleet, whatever the clock."""
    lines = [
        f"WARNING: {o.name} ran without {len(o.not_started)} of {PARTICIPANTS} participants, "
        f"which failed to start ({', '.join(o.not_started)}); its row is not comparable."
        for o in outcomes if o.not_started
    ]
    by_name = {o.name: o for o in outcomes}
    sync, buff = by_name.get("sync FedAvg"), by_name.get("FedBuff")
    if sync and buff and sync.to_target and buff.to_target:
        clock = "simulated" if args.clock == "simulated" else "wall"
        text = (f"sync/FedBuff {clock} time to {args.target:g}: {sync.to_target / buff.to_target:.2f}x; "
                f"final accuracy difference {100 * (buff.final_accuracy - sync.final_accuracy):+.2f} points")
        if args.clock == "simulated":
            if sync.wall_to_target and buff.wall_to_target:
                text += f"; in real seconds: {sync.wall_to_target / buff.wall_to_target:.2f}x"
        elif sync.warm_to_target and buff.warm_to_target:
            text += (f"; counted from each run's first accepted update: "
                     f"{sync.warm_to_target / buff.warm_to_target:.2f}x")
        lines.insert(0, text)
    return "\n\n".join(lines)


def plot(outcomes: list[Outcome], args: argparse.Namespace, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for o in outcomes:
        ax.plot(o.curve.time, o.curve.accuracy, label=o.name, drawstyle="steps-post")
    ax.axhline(args.target, color="grey", linestyle=":", label=f"target {args.target:g}")
    ax.set_xlabel(f"{'simulated' if args.clock == 'simulated' else 'wall'} seconds since first dispatch")
    ax.set_ylabel("test accuracy of the global model")
    ax.set_title(f"digits, {PARTICIPANTS} participants, lognormal(sigma=1) speeds, {args.clock} clock")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> str:
    """Core count and 1-minute load average before the runs: what the wall columns depend
    on. Taken before Ray starts because the run's own actors push the load average up."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores, 1-minute load average {load:.2f} before the runs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clock", choices=("wall", "simulated"), default="simulated",
                        help="simulated: time is the system model's, the same on any machine "
                        "(default); wall: participants sleep, time is real seconds")
    parser.add_argument("--target", type=float, default=0.90, help="test accuracy to reach")
    parser.add_argument("--max-updates", type=int, default=4000,
                        help="guard per schedule: accepted updates")
    parser.add_argument("--max-wall", type=float, default=None,
                        help="guard per schedule, real seconds (default: 90 under the wall "
                        "clock, 900 under the simulated clock)")
    parser.add_argument("--seconds-per-sample", type=float, default=0.0005,
                        help="simulated seconds per training sample at speed 1")
    parser.add_argument("--deadline", type=float, default=None,
                        help="deadline_s of the deadline schedule, in the run's clock's seconds "
                        "(default: median task time x 2)")
    parser.add_argument("--speed-seed", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="run only these schedules")
    parser.add_argument("--tag", default=None,
                        help="suffix for the results files (e.g. loaded), so runs under "
                        "different conditions are kept side by side")
    args = parser.parse_args(argv)
    if args.max_wall is None:
        args.max_wall = MAX_WALL_S[args.clock]

    speeds = draw_speeds(SpeedDistribution(kind="lognormal", sigma=1.0, seed=args.speed_seed), PARTICIPANTS)
    typical_task = args.seconds_per_sample * 1437 / PARTICIPANTS  # one epoch of a mean shard
    deadline = args.deadline or round(2 * typical_task / float(np.median(speeds)), 2)
    host = machine()
    print(f"{args.clock} clock; slowdowns vs the fastest: median {np.median(1 / speeds):.1f}x, "
          f"slowest {(1 / speeds).max():.1f}x; deadline {deadline}s; {host}", flush=True)

    ray.init(address="local", num_cpus=PARTICIPANTS, include_dashboard=False, logging_level="WARNING")
    outcomes = []
    try:
        for name, (schedule, strategy) in schedules(deadline).items():
            if args.only and name not in args.only:
                continue
            started = time.perf_counter()
            history = Orchestrator(workload(args, schedule, strategy)).run()
            outcomes.append(measure(name, history, args.target, time.perf_counter() - started))
            o = outcomes[-1]
            print(f"  {name}: to target {o.to_target} ({args.clock} s), {o.wall_to_target} wall s; "
                  f"final {o.final_accuracy:.4f}; {o.stop}", flush=True)
    finally:
        ray.shutdown()

    text, line = table(outcomes, args), summary(outcomes, args)
    print()
    print(text)
    if line:
        print(line)
    stem = "stragglers" + ("_wall" if args.clock == "wall" else "") + (f"_{args.tag}" if args.tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(outcomes, args, RESULTS / f"{stem}.png")
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    guard = (f"{args.max_updates} accepted updates (real-time safety net {args.max_wall:g} s)"
             if args.clock == "simulated" else f"max_wall_s={args.max_wall:g} real seconds")
    (RESULTS / f"{stem}.md").write_text(
        f"# stragglers ({args.clock} clock)\n\n"
        f"Target accuracy {args.target:g}; {PARTICIPANTS} participants, Dirichlet(0.5), "
        f"lognormal(sigma=1, seed={args.speed_seed}) speeds, "
        f"{args.seconds_per_sample:g} simulated s/sample, deadline {deadline}s ({args.clock} clock). "
        f"Guard: {guard}. Final accuracy is the global model's accuracy when the run stopped "
        "(at the target, or at the guard).\n\n"
        f"Machine: {host}.\n\n"
        f"{text}\n\n{line}\n\nCommand:\n\n    {command}\n\nPlot: `{stem}.png`\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

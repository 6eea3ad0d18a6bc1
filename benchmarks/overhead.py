"""What does fedray's run loop cost over the simplest possible Ray loop?

The same synchronous FedAvg workload runs twice in one process, on one Ray instance:

- ``fedray``: ``Orchestrator(config).run()``, the real thing (schedule, hygiene checks,
  history rows, staleness bookkeeping, ``ray.wait`` event loop);
- ``hand-written``: plain ``ray.remote(Participant)`` actors, one ``ray.put`` of the
  global state per round, ``ray.get`` of all updates, a numpy example-weighted average.

Both use the same participant specs and the same per-task seeds
(``orchestrator.cluster.members.task_seed``), so they compute the same models: the final accuracies
must agree. Both evaluate the global model only at the start and at the end. Wall time
includes starting the actors (each imports torch and loads its shard) in both.

    python benchmarks/overhead.py                  # 8 participants, 200 rounds
    python benchmarks/overhead.py --rounds 20      # a quick look

Prints one table and writes it, with the command, to ``benchmarks/results/overhead.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import ray

from actors.data.load import apply_view, load_shared_dataset
from actors.participant.participant import Participant
from actors.participant.pool import PoolWorker
from actors.training.loops import evaluate
from actors.training.models import build_model
from actors.training.params import layout_of, set_flat
from orchestrator.cluster.members import task_seed
from orchestrator.cluster.specs import participant_specs  # noqa: E402
from orchestrator.config import RunConfig, load_config
from orchestrator.loop.run import Orchestrator
from strategies.types import GlobalState, Instructions

RESULTS = Path(__file__).parent / "results" / "overhead.md"


POOL_WORKERS = 2


def workload(participants: int, rounds: int, seed: int, hosting: str = "dedicated") -> RunConfig:
    """The demo's workload (digits, Dirichlet 0.5, MLP) at benchmark length, hosted on an
    actor per participant or on a pool of two workers."""
    pool = {"workers": POOL_WORKERS} if hosting == "pool" else {}
    return load_config({
        "name": "overhead",
        "seed": seed,
        "dataset": {"name": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}},
        "groups": [{
            "name": "site",
            "count": participants,
            "model": {"name": "mlp", "hidden": [64]},
            "train": {"local_epochs": 2, "batch_size": 16, "lr": 0.1},
            "resources": {"num_cpus": 0.25},
            "hosting": hosting, **pool,
        }],
        "strategy": {"name": "fedavg"},
        "schedule": {"mode": "sync"},
        "stop": {"max_aggregations": rounds},
        "evaluation": {"every": rounds + 1},  # only the start and the end, as below
    })


def run_fedray(config: RunConfig) -> tuple[float, float, float]:
    """Total wall, wall of the training loop (first dispatch to final evaluation), accuracy."""
    started = time.perf_counter()
    history = Orchestrator(config).run()
    wall = time.perf_counter() - started
    evals = history[history.event == "evaluation"]
    first_dispatch = history.time[history.event == "dispatch"].iloc[0]
    loop = history.time[history.event == "stop"].iloc[-1] - first_dispatch
    return wall, float(loop), float(evals.accuracy.iloc[-1])


def run_hand_written(config: RunConfig) -> tuple[float, float, float]:
    """The minimal loop: actors (one per participant, or pool workers each serving every
    other participant), ray.put once per round, ray.get, numpy weighted mean."""
    started = time.perf_counter()
    group = config.groups[0]
    specs = [spec for spec, _ in participant_specs(config, "run")]  # same specs
    if group.hosting == "pool":
        worker = ray.remote(PoolWorker).options(num_cpus=group.resources.num_cpus)
        workers = [worker.remote() for _ in range(POOL_WORKERS)]
        actors = [workers[i % POOL_WORKERS] for i in range(len(specs))]
        ray.get([a.register.remote([s]) for a, s in zip(actors, specs, strict=True)])  # once; then names
        extra = [(spec.name,) for spec in specs]  # a pool worker is told whom it serves
    else:
        actor = ray.remote(Participant).options(num_cpus=group.resources.num_cpus)
        actors = [actor.remote(spec) for spec in specs]
        extra = [()] * len(specs)
    layout = ray.get(actors[0].describe.remote(*extra[0]))["layout"]
    ray.get([a.describe.remote(*e) for a, e in zip(actors[1:], extra[1:], strict=True)])  # all started
    params = np.asarray(ray.get(actors[0].initial_parameters.remote(*extra[0])), np.float32)

    data = load_shared_dataset(config.dataset)
    x_test = apply_view(data.x_test, "flat", data.image_shape)
    import torch

    torch.manual_seed(config.seed)
    model = build_model(group.model.name, group.model.options, x_test.shape[1:], data.num_classes)
    assert layout_of(model) == layout
    x_t, y_t = torch.as_tensor(x_test), torch.as_tensor(data.y_test)

    def accuracy(vector: np.ndarray) -> float:
        set_flat(model, vector, layout)
        return evaluate(model, x_t, y_t, config.evaluation.batch_size)["accuracy"]

    accuracy(params)  # the same evaluation work fedray does at version 0
    task_id = 0
    loop_started = time.perf_counter()
    for version in range(config.stop.max_aggregations):
        state = ray.put(GlobalState(version, params, layout))
        refs = []
        for index, handle in enumerate(actors):
            seed = task_seed(config.seed, index, version)  # the run loop's per-task seeds
            refs.append(handle.train.remote(*extra[index], state, Instructions(task_id, seed)))
            task_id += 1
        updates = ray.get(refs)
        counts = np.array([u.num_examples for u in updates], np.float64)
        coef = (counts / counts.sum()).astype(np.float32)
        params = params + coef @ np.stack([u.payload for u in updates])
    final = accuracy(params)
    loop = time.perf_counter() - loop_started
    for handle in set(actors):
        ray.kill(handle)
    return time.perf_counter() - started, loop, final


def markdown_table(rows: list[tuple[str, str]]) -> str:
    lines = ["| measure | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each; medians reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hosting", choices=["dedicated", "pool"], default="dedicated",
                        help="both loops on an actor per participant, or both on 2 pool workers")
    parser.add_argument("--no-write", action="store_true", help="print only; leave results/ alone")
    args = parser.parse_args(argv)

    config = workload(args.participants, args.rounds, args.seed, args.hosting)
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 2), include_dashboard=False,
             logging_level="WARNING")
    load_before = os.getloadavg()[0]  # other work on the machine: read ratios with this in mind
    walls: dict[str, list[float]] = {"fedray": [], "hand": []}
    loops: dict[str, list[float]] = {"fedray": [], "hand": []}
    accs: dict[str, list[float]] = {"fedray": [], "hand": []}
    try:
        for repeat in range(args.repeats):
            # alternate which goes first so drift in machine load hits both alike
            order = [("hand", run_hand_written), ("fedray", run_fedray)]
            for key, fn in order if repeat % 2 == 0 else order[::-1]:
                wall, loop, acc = fn(config)
                walls[key].append(wall)
                loops[key].append(loop)
                accs[key].append(acc)
                print(f"  repeat {repeat + 1}: {key:<7} total {wall:7.2f}s  loop {loop:7.2f}s  "
                      f"accuracy {acc:.4f}", flush=True)
    finally:
        ray.shutdown()
    load_after = os.getloadavg()[0]

    fed, hand = statistics.median(walls["fedray"]), statistics.median(walls["hand"])
    loop_fed, loop_hand = statistics.median(loops["fedray"]), statistics.median(loops["hand"])
    runs = {k: ", ".join(f"{w:.2f}" for w in v) for k, v in walls.items()}
    loop_runs = {k: ", ".join(f"{w:.2f}" for w in v) for k, v in loops.items()}
    acc_fed, acc_hand = accs["fedray"][-1], accs["hand"][-1]
    rows = [
        ("workload", f"{args.participants} participants, digits Dirichlet(0.5), MLP[64], "
                     f"sync FedAvg, {args.rounds} rounds, {os.cpu_count()} CPU cores, hosting: {args.hosting}"),
        ("repeats (interleaved, median shown)", str(args.repeats)),
        ("machine load average (1 min) before / after", f"{load_before:.1f} / {load_after:.1f}"),
        ("hand-written total wall, incl. actor start-up (s)", f"{hand:.2f}  (runs: {runs['hand']})"),
        ("fedray total wall, incl. actor start-up (s)", f"{fed:.2f}  (runs: {runs['fedray']})"),
        ("**ratio fedray / hand-written, total wall**", f"**{fed / hand:.3f}**"),
        ("hand-written loop wall, first dispatch to final eval (s)",
         f"{loop_hand:.2f}  (runs: {loop_runs['hand']})"),
        ("fedray loop wall, first dispatch to final eval (s)",
         f"{loop_fed:.2f}  (runs: {loop_runs['fedray']})"),
        ("ratio fedray / hand-written, loop wall", f"{loop_fed / loop_hand:.3f}"),
        ("final accuracy, hand-written", f"{acc_hand:.6f}"),
        ("final accuracy, fedray", f"{acc_fed:.6f}"),
        ("absolute accuracy difference", f"{abs(acc_fed - acc_hand):.2e}"),
        ("accuracies identical across repeats",
         str(len(set(accs["fedray"] + accs["hand"])) == 1)),
    ]
    table = markdown_table(rows)
    print("\n" + table)
    if not args.no_write:
        results = RESULTS if args.hosting == "dedicated" else RESULTS.with_name("overhead_pool.md")
        command = "python benchmarks/overhead.py" + (
            " " + shlex.join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(
            "# overhead: fedray vs a hand-written Ray loop\n\n"
            f"Command (from the repository root):\n\n```\n{command}\n```\n\n"
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n{table}\n"
        )
        print(f"\nwrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ditto's personal models against FedAvg's global model, on each participant's own data.

8 participants on a Dirichlet(0.1) label-skewed split of digits; each holds out 30% of
its own shard as its own test split (``data.test_fraction``), which is what a
personalised model is for. Both runs use the same seeds, so the same data and batches.

- FedAvg: after the last round, the global model is evaluated on each participant's own
  test split (here, in the benchmark process, from the participants' specs).
- Ditto: each participant's personal model, as it reported it with its last update.

Reported: one row per participant and the mean, with wall seconds of each run.

    python benchmarks/ditto.py                 # 30 rounds, lam 0.1
    python benchmarks/ditto.py --rounds 10     # a quick look
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actors.participant.participant import Participant  # noqa: E402
from orchestrator.cluster.specs import participant_specs  # noqa: E402
from orchestrator.config import load_config  # noqa: E402
from orchestrator.loop.run import Orchestrator  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "ditto.md"


def config_for(strategy: dict, args: argparse.Namespace) -> dict:
    return {
        "name": f"personal-{strategy['name']}", "seed": args.seed,
        "dataset": {"name": "digits", "partition": {"kind": "dirichlet", "alpha": args.alpha}},
        "groups": [{"name": "site", "count": 8, "model": {"name": "mlp", "hidden": [64]},
                    "data": {"source": "partition", "test_fraction": 0.3},
                    "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
                    "resources": {"num_cpus": 0.25}}],
        "strategy": strategy,
        "schedule": {"mode": "sync"},
        "stop": {"max_aggregations": args.rounds},
        "evaluation": {"every": args.rounds},
    }


def fedavg_on_own_splits(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, int], float]:
    started = time.perf_counter()
    orch = Orchestrator(load_config(config_for({"name": "fedavg"}, args)))
    orch.run()
    seconds = time.perf_counter() - started
    accuracy, sizes = {}, {}
    for spec, _ in participant_specs(orch.config, orch.run_id):  # the same shards, rebuilt here to score the global model
        p = Participant(spec)
        p.local.set(orch.params)
        accuracy[spec.name] = p.local.evaluate()["accuracy"]
        sizes[spec.name] = len(p.data.y_test)
    return accuracy, sizes, seconds


def ditto_personal(args: argparse.Namespace) -> tuple[dict[str, float], float]:
    started = time.perf_counter()
    history = Orchestrator(load_config(config_for({"name": "ditto", "lam": args.lam}, args))).run()
    updates = history[history.event == "update"]
    last = updates.groupby("participant").accuracy.last()
    return {str(k): float(v) for k, v in last.items()}, time.perf_counter() - started


def table(fedavg: dict[str, float], ditto: dict[str, float], sizes: dict[str, int]) -> str:
    lines = ["| participant | own test examples | FedAvg global | Ditto personal | difference (points) |",
             "|---|---:|---:|---:|---:|"]
    for name in sorted(fedavg):
        lines.append(f"| {name} | {sizes[name]} | {fedavg[name]:.3f} | {ditto[name]:.3f} | "
                     f"{100 * (ditto[name] - fedavg[name]):+.1f} |")
    mean_f = sum(fedavg.values()) / len(fedavg)
    mean_d = sum(ditto[n] for n in fedavg) / len(fedavg)
    wins = sum(ditto[n] > fedavg[n] for n in fedavg)
    lines.append(f"| mean ({wins}/{len(fedavg)} better with Ditto) | {sum(sizes.values())} | "
                 f"{mean_f:.3f} | {mean_d:.3f} | {100 * (mean_d - mean_f):+.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--lam", type=float, default=0.1, help="Ditto's pull towards the global model")
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    try:
        fedavg, sizes, fedavg_s = fedavg_on_own_splits(args)
        ditto, ditto_s = ditto_personal(args)
    finally:
        ray.shutdown()
    text = table(fedavg, ditto, sizes) + f"\n\nWall seconds: FedAvg {fedavg_s:.0f}, Ditto {ditto_s:.0f}."
    command = "python benchmarks/ditto.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(text)
    if not args.no_write:
        RESULTS.write_text(f"# Ditto personal vs FedAvg global on each participant's own test split "
                           f"(digits, Dirichlet({args.alpha}), {args.rounds} rounds, lam {args.lam})\n\n"
                           f"{text}\n\nCommand: `{command.strip()}`\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

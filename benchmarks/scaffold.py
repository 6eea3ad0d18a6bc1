"""SCAFFOLD against FedAvg where client drift hurts: digits, Dirichlet(0.1) label skew.

10 participants, an MLP (64 hidden), plain local SGD (no momentum, as SCAFFOLD's option II
assumes), every participant in every synchronous round. Both strategies run with the
same seeds, so they see the same data, the same initial model and the same batches;
only the client half (control-variate correction) and the server half differ.

Reported: the round at which the server's test accuracy first reaches the target, the
accuracy after the last round, and the wall seconds of each run. The two accuracy
curves go to ``benchmarks/results/scaffold.png``.

    python benchmarks/scaffold.py                 # 60 rounds, target 0.90
    python benchmarks/scaffold.py --rounds 20     # a quick look
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

from orchestrator.config import load_config  # noqa: E402
from orchestrator.loop.run import Orchestrator  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def config_for(strategy: str, rounds: int, alpha: float, epochs: int, lr: float, seed: int) -> dict:
    return {
        "name": f"drift-{strategy}", "seed": seed,
        "dataset": {"name": "digits", "partition": {"kind": "dirichlet", "alpha": alpha}},
        "groups": [{"name": "site", "count": 10, "model": {"name": "mlp", "hidden": [64]},
                    "train": {"local_epochs": epochs, "batch_size": 16, "lr": lr},
                    "resources": {"num_cpus": 0.2}}],
        "strategy": {"name": strategy},
        "schedule": {"mode": "sync"},
        "stop": {"max_aggregations": rounds},
    }


def measure(strategy: str, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    config = config_for(strategy, args.rounds, args.alpha, args.epochs, args.lr, args.seed)
    history = Orchestrator(load_config(config)).run()
    evals = history[history.event == "evaluation"][["version", "accuracy"]]
    reached = evals[evals.accuracy >= args.target]
    return {"strategy": strategy, "curve": evals,
            "rounds_to_target": int(reached.version.iloc[0]) if len(reached) else None,
            "final": float(evals.accuracy.iloc[-1]), "best": float(evals.accuracy.max()),
            "seconds": time.perf_counter() - started}


def table(rows: list[dict], target: float) -> str:
    base = rows[0]["rounds_to_target"]
    lines = [f"| strategy | rounds to {target:.2f} | FedAvg's rounds / these | final accuracy | "
             "best accuracy | wall s |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        rounds = r["rounds_to_target"]
        ratio = f"{base / rounds:.2f}" if rounds and base else "n/a"
        lines.append(f"| {r['strategy']} | {rounds if rounds is not None else 'not reached'} | {ratio} | "
                     f"{r['final']:.3f} | {r['best']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.plot(r["curve"].version, r["curve"].accuracy, label=r["strategy"])
    ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("round (global version)")
    ax.set_ylabel("test accuracy")
    ax.set_title("digits, Dirichlet(0.1), 10 participants")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration")
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    try:
        rows = [measure(name, args) for name in ("fedavg", "scaffold")]
    finally:
        ray.shutdown()
    text = table(rows, args.target)
    command = "python benchmarks/scaffold.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        plot(rows, RESULTS / "scaffold.png", args.target)
        (RESULTS / "scaffold.md").write_text(
            f"# SCAFFOLD vs FedAvg (digits, Dirichlet({args.alpha}), 10 participants, "
            f"{args.epochs} local epochs, lr {args.lr})\n\n{text}\n\nCommand: `{command.strip()}`\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Heterogeneous architectures on digits: what sharing buys over training alone.

8 participants with three architectures -- 3 CNNs on 8x8 images, 3 MLPs on flat
64-feature rows, 2 GRUs reading the image row by row -- on a Dirichlet(0.3) label-skewed
split of scikit-learn's digits. ``public_size`` training examples are held out of the
split as the unlabelled public set (for every strategy, so the private data is the same).

Reported: the mean over participants of each one's own model's accuracy on the shared
test split (its latest report, after the last aggregation), for local-only training,
FedMD, FedDF, DS-FL, FedPer (bodies are shared only among participants whose body
parameters match by name and shape, i.e. within an architecture) and, as the reference,
homogeneous FedAvg (8 MLPs; the global model's test accuracy, evaluated by the server).

    python benchmarks/heterogeneous.py            # the full table
    python benchmarks/heterogeneous.py --rounds 4 # a quick look
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.config import load_config  # noqa: E402
from orchestrator.loop.run import Orchestrator  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "heterogeneous.md"


def _group(name: str, count: int, model: dict, view: str, train: dict) -> dict:
    return {
        "name": name, "count": count, "model": model,
        "data": {"source": "partition", "view": view},
        "train": {"local_epochs": 2, "batch_size": 32, **train},
        "resources": {"num_cpus": 0.25},
    }


MIXED = [
    _group("cnn", 3, {"name": "cnn", "channels": [16], "hidden": 64}, "image", {"lr": 0.05, "momentum": 0.5}),
    _group("mlp", 3, {"name": "mlp", "hidden": [64]}, "flat", {"lr": 0.05, "momentum": 0.5}),
    _group("gru", 2, {"name": "gru", "hidden": 48}, "sequence", {"lr": 0.01, "optimizer": "adam"}),
]
HOMOGENEOUS = [_group("mlp", 8, {"name": "mlp", "hidden": [64]}, "flat", {"lr": 0.05, "momentum": 0.5})]

DISTILL = {"temperature": 2.0, "distill_epochs": 2, "revisit_kd_weight": 1.0}
"""Participants' distillation knobs; ``revisit_kd_weight`` keeps a KD term on public
batches during private training (plain FedMD/DS-FL revisit with 0)."""

RUNS = [  # (label, strategy config, groups)
    ("local-only", {"name": "local"}, MIXED),
    ("FedMD", {"name": "fedmd", **DISTILL}, MIXED),
    ("FedDF", {"name": "feddf", "temperature": 2.0, "server_epochs": 2}, MIXED),
    ("DS-FL", {"name": "dsfl", **DISTILL, "era_temperature": 0.5}, MIXED),
    ("FedPer (body shared per architecture)", {"name": "fedper"}, MIXED),
    ("FedAvg, homogeneous MLPs (reference)", {"name": "fedavg"}, HOMOGENEOUS),
]


def config_for(strategy: dict, groups: list, rounds: int, public_size: int, seed: int) -> dict:
    return {
        "name": f"hetero-{strategy['name']}",
        "seed": seed,
        "dataset": {"name": "digits", "public_size": public_size,
                    "partition": {"kind": "dirichlet", "alpha": 0.3}},
        "groups": copy.deepcopy(groups),
        "strategy": strategy,
        "schedule": {"mode": "sync"},
        "stop": {"max_aggregations": rounds},
        "evaluation": {"every": rounds},
    }


def measure(label: str, config: dict) -> dict:
    started = time.perf_counter()
    history = Orchestrator(load_config(config)).run()
    updates = history[history.event == "update"]
    evals = history[history.event == "evaluation"]
    return {
        "label": label,
        "accuracy": float(evals.accuracy.iloc[-1]),
        "bytes_per_update": float(updates.bytes.mean()),
        "total_mb": float(updates.bytes.sum()) / 1e6,
        "seconds": time.perf_counter() - started,
    }


def table(rows: list[dict]) -> str:
    local = next(r["accuracy"] for r in rows if r["label"] == "local-only")
    lines = [
        "| strategy | mean participant test accuracy | vs local-only (points) | bytes per update | MB sent in total | wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['accuracy']:.3f} | {100 * (r['accuracy'] - local):+.1f} | "
            f"{r['bytes_per_update']:,.0f} | {r['total_mb']:.2f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="aggregations per run")
    parser.add_argument("--public-size", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="labels to run (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="WARNING")
    rows = []
    try:
        for label, strategy, groups in RUNS:
            if args.only and label.split()[0] not in args.only and label != "local-only":
                continue
            rows.append(measure(label, config_for(strategy, groups, args.rounds, args.public_size, args.seed)))
            print(f"  {label}: {rows[-1]['accuracy']:.3f} ({rows[-1]['seconds']:.0f}s)", flush=True)
    finally:
        ray.shutdown()
    text = table(rows)
    command = "python benchmarks/heterogeneous.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            "# Heterogeneous architectures (digits, 8 participants: 3 CNN, 3 MLP, 2 GRU; "
            f"Dirichlet(0.3); {args.rounds} sync rounds; public set {args.public_size})\n\n"
            f"{text}\n\nCommand: `{command.strip()}`\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What do secure aggregation and DP-FedAvg cost in accuracy and wall time?

The built-in demo (digits, 8 label-skewed participants, MLP, sync FedAvg) runs three ways
in one process on one Ray instance, one after the other, so the ratios are measured side
by side on the same (noisy) machine:

- ``plain``: the demo as is;
- ``secure aggregation``: pairwise-masked updates (X25519 + HKDF seeds, uint64 ring);
- ``DP-FedAvg``: each update clipped to ``--clip``, Gaussian noise ``--noise`` x clip on the
  sum; epsilon at ``--delta`` from Opacus' RDP accountant.

    python benchmarks/privacy.py                 # the demo's 50 rounds
    python benchmarks/privacy.py --rounds 10     # a quick look

Prints one table and writes it, with the command, to ``benchmarks/results/privacy.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import ray

from orchestrator.cli import demo_config_path
from orchestrator.config import RunConfig, load_config
from orchestrator.run import Orchestrator

RESULTS = Path(__file__).parent / "results" / "privacy.md"


def variant(rounds: int, privacy: dict) -> RunConfig:
    import yaml

    raw = yaml.safe_load(demo_config_path().read_text())
    raw["stop"] = {"max_aggregations": rounds}
    raw["evaluation"] = {"every": rounds}  # start and end only: evaluation is not what we measure
    raw["privacy"] = privacy
    return load_config(raw)


def measure(config: RunConfig) -> dict:
    started = time.perf_counter()
    orch = Orchestrator(config)
    history = orch.run()
    wall = time.perf_counter() - started
    first = history.time[history.event == "dispatch"].iloc[0]
    loop = float(history.time[history.event == "stop"].iloc[-1] - first)
    return {"accuracy": orch.summary["final_accuracy"], "wall": wall, "loop": loop,
            "epsilon": orch.summary.get("dp_epsilon"), "params": orch.params.copy()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--delta", type=float, default=1e-3)
    args = parser.parse_args(argv)
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    variants = {
        "plain": {},
        "secure aggregation": {"secure_aggregation": True},
        "DP-FedAvg": {"dp": {"clip_norm": args.clip, "noise_multiplier": args.noise, "delta": args.delta}},
    }
    rows = {name: measure(variant(args.rounds, p)) for name, p in variants.items()}
    ray.shutdown()
    base = rows["plain"]
    lines = [
        f"{args.rounds} rounds of the demo (8 participants, sync FedAvg); DP: clip {args.clip}, "
        f"noise multiplier {args.noise}, delta {args.delta}",
        "",
        "| variant | final accuracy | max abs diff of final params vs plain | wall s | loop s | loop / plain | epsilon |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        diff = float(np.abs(r["params"] - base["params"]).max())
        lines.append(f"| {name} | {r['accuracy']:.4f} | {diff:.2e} | {r['wall']:.1f} | {r['loop']:.1f} | "
                     f"{r['loop'] / base['loop']:.2f} | {eps} |")
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/privacy.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"# privacy\n\n```\n{command.strip()}\n```\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

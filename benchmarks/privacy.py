"""What do secure aggregation, DP-FedAvg and local DP-SGD cost in accuracy and wall time?

The built-in demo (digits, 8 label-skewed participants, MLP) runs several ways in one
process on one Ray instance, one after the other, so the ratios are measured side by side
on the same (noisy) machine. Each private variant is compared with the plain run of the
same schedule:

- ``sync``: the demo's rounds, plain / secure aggregation / DP-FedAvg / local DP-SGD;
- ``buffered``: FedBuff (buffer of 4, all 8 busy), plain / secure aggregation.

Secure aggregation masks updates (X25519 + HKDF seeds, uint64 ring); DP-FedAvg clips each
update to ``--clip`` and adds Gaussian noise ``--noise`` x clip to the sum; local DP-SGD
(Opacus) clips per-example gradients to ``--clip`` and adds noise ``--sgd-noise`` x clip
at every local step. Epsilon is at ``--delta`` from Opacus' RDP accountant (for DP-SGD: the largest
over participants).

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

from orchestrator.config import RunConfig, load_config
from orchestrator.loop.run import Orchestrator
from orchestrator.tools.cli import demo_config_path

RESULTS = Path(__file__).parent / "results" / "privacy.md"


def variant(rounds: int, schedule: str, privacy: dict, dp_sgd: dict | None = None) -> RunConfig:
    import yaml

    raw = yaml.safe_load(demo_config_path().read_text())
    raw["stop"] = {"max_aggregations": rounds}
    raw["evaluation"] = {"every": rounds}  # start and end only: evaluation is not what we measure
    raw["privacy"] = privacy
    if schedule == "buffered":
        raw["schedule"] = {"mode": "buffered", "buffer_size": 4}
    if dp_sgd is not None:
        for group in raw["groups"]:
            group.setdefault("train", {})["dp_sgd"] = dp_sgd
    return load_config(raw)


def measure(config: RunConfig) -> dict:
    started = time.perf_counter()
    orch = Orchestrator(config)
    history = orch.run()
    wall = time.perf_counter() - started
    first = history.time[history.event == "dispatch"].iloc[0]
    loop = float(history.time[history.event == "stop"].iloc[-1] - first)
    epsilon = orch.summary.get("dp_epsilon", orch.summary.get("dp_sgd_epsilon_max"))
    return {"accuracy": orch.summary["final_accuracy"], "wall": wall, "loop": loop,
            "epsilon": epsilon, "params": orch.params.copy()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--delta", type=float, default=1e-3)
    parser.add_argument("--sgd-noise", type=float, default=1.0, help="local DP-SGD's noise multiplier")
    args = parser.parse_args(argv)
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    dp = {"dp": {"clip_norm": args.clip, "noise_multiplier": args.noise, "delta": args.delta}}
    dp_sgd = {"max_grad_norm": args.clip, "noise_multiplier": args.sgd_noise, "delta": args.delta}
    variants = {  # name: (schedule, privacy, local DP-SGD)
        "plain": ("sync", {}, None),
        "secure aggregation": ("sync", {"secure_aggregation": True}, None),
        "DP-FedAvg": ("sync", dp, None),
        "local DP-SGD": ("sync", {}, dp_sgd),
        "plain FedBuff": ("buffered", {}, None),
        "plain FedBuff, again": ("buffered", {}, None),  # FedBuff's batches depend on timing
        "secure aggregation FedBuff": ("buffered", {"secure_aggregation": True}, None),
    }
    rows = {name: measure(variant(args.rounds, *v)) | {"schedule": v[0]} for name, v in variants.items()}
    ray.shutdown()
    plain = {"sync": rows["plain"], "buffered": rows["plain FedBuff"]}
    lines = [
        f"{args.rounds} aggregations of the demo (8 participants, FedAvg; FedBuff: buffer 4); "
        f"DP: clip {args.clip}, noise multiplier {args.noise} (DP-FedAvg) / {args.sgd_noise} (DP-SGD), "
        f"delta {args.delta}",
        "",
        "| variant | schedule | final accuracy | max abs diff of final params vs plain | wall s | loop s "
        "| loop / plain | epsilon |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        base = plain[r["schedule"]]
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        diff = float(np.abs(r["params"] - base["params"]).max())
        lines.append(f"| {name} | {r['schedule']} | {r['accuracy']:.4f} | {diff:.2e} | {r['wall']:.1f} | "
                     f"{r['loop']:.1f} | {r['loop'] / base['loop']:.2f} | {eps} |")
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/privacy.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"# privacy\n\n```\n{command.strip()}\n```\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

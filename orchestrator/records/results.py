"""A finished run's results: the summary and the run directory.

Every number in ``summary.json`` is computed from the history, so a report re-read from
``history.parquet`` agrees with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from actors.spec.training import METRICS
from orchestrator.cluster.participants import Participants
from orchestrator.config import RunConfig
from orchestrator.loop.run_state import RunState
from orchestrator.records.history import History

FAILURE_EVENTS = ["failure", "timeout", "dropout"]
"""Events that count as failures: a crashed or restarted actor, a hung task, a dropout."""


def summarize(frame: pd.DataFrame, config: RunConfig, state: RunState, participants: Participants) -> dict[str, Any]:
    """``summary.json``: the task's metrics (last and best of the headline one), time,
    counts of each outcome, staleness."""
    updates = frame[frame.event == "update"]
    evals = frame[frame.event == "evaluation"]
    metric, higher = config.task.metric_name, config.task.higher_is_better
    scores = evals[metric].dropna() if metric in evals else pd.Series(dtype=float)
    summary = {
        "name": config.name,
        "task": config.task.kind,
        "metric": metric,
        "stop_reason": str(frame[frame.event == "stop"].detail.iloc[-1]),
        **{f"final_{m}": float(evals[m].iloc[-1]) if m in evals else float("nan")
           for m in METRICS[config.task.kind]},
        f"best_{metric}": float(scores.max() if higher else scores.min()) if len(scores) else float("nan"),
        "wall_seconds": float(frame.time.iloc[-1]),
        "num_aggregations": int(state.version),
        "num_updates": int(len(updates)),
        "num_dispatched": int((frame.event == "dispatch").sum()),
        "num_failures": int(frame.event.isin(FAILURE_EVENTS).sum()),
        "num_rejected": int((frame.event == "rejected").sum()),
        "num_late": int((frame.event == "late").sum()),
        "mean_staleness": float(updates.staleness.mean()) if len(updates) else 0.0,
        "participants": len(participants.members),
        "participants_lost": sum(m.lost for m in participants.members.values()),
        "num_parameters": int(state.layout.size),
        "target": list(config.target) if config.target else None,
        "time_to_target": state.time_to_target,
    }
    dp_sgd = [g.train.dp_sgd for g in config.groups if g.train.dp_sgd is not None]
    if dp_sgd:  # local DP-SGD: the most any participant has spent (each one's only grows)
        spent = updates.get("epsilon", pd.Series(dtype=float)).dropna()
        summary |= {"dp_sgd_epsilon_max": float(spent.max()) if len(spent) else 0.0,
                    "dp_sgd_delta": max(d.delta for d in dp_sgd)}
    return summary


def write_config(directory: Path, config: RunConfig) -> None:
    """The resolved config, every default filled in (what ``--resume`` reads back)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def save_run(directory: Path, config: RunConfig, history: History, summary: dict[str, Any],
             members_info: dict[str, dict[str, Any]], params: np.ndarray) -> None:
    """Config, history (Parquet + CSV), summary, where each participant ran, final params."""
    write_config(directory, config)
    history.save(directory)
    (directory / "summary.json").write_text(json.dumps(summary, indent=2))
    described = {name: {k: v for k, v in info.items() if k != "layout"} for name, info in members_info.items()}
    (directory / "participants.json").write_text(json.dumps(described, indent=2, default=str))
    np.save(directory / "global_params.npy", params)

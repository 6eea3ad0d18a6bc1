"""The fitted preprocessing reaches a participant one way: in its spec. The driver puts it
there after the fit (``Participant.adopt`` for a dedicated actor, the spec it sends for a
pool worker), and sends it once more to an actor Ray restarted from its first spec."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import ray
from conftest import run_while

from actors.data.tables import TransformMissing
from actors.participant.participant import Participant
from actors.spec.data import FittedTransform
from orchestrator.cluster.specs import participant_specs
from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator
from strategies.types import GlobalState, Instructions


def _sites(tmp_path, sites: int, rows: int = 80) -> None:
    rng = np.random.default_rng(5)
    for i in range(sites):
        age = rng.normal(50, 12, rows)
        pd.DataFrame({"age": age, "dose": rng.normal(400, 90, rows),
                      "label": (age > 50).astype(int)}).to_csv(tmp_path / f"site_{i}.csv", index=False)


def _config(tmp_path, sites: int = 2, **overrides) -> dict:
    _sites(tmp_path, sites)
    return {
        "name": "transform", "seed": 0, "preprocess": {"standardize": True},
        "groups": [{"name": "site", "count": sites,
                    "data": {"source": "file", "path": str(tmp_path / "site_{index}.csv"), "num_classes": 2},
                    "model": {"name": "mlp", "hidden": [8]},
                    "train": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
                    "resources": {"num_cpus": 0.5, "max_restarts": -1},
                    "system": {"simulated_seconds_per_sample": 0.005}}],  # tasks last ~0.16 s
        "evaluation": {"path": str(tmp_path / "site_0.csv"), "every": 100},
        **overrides,
    }


def test_the_transform_travels_in_the_spec_not_with_each_task(tmp_path):
    assert "transform" not in {f.name for f in dataclasses.fields(Instructions)}
    spec, _ = participant_specs(load_config(_config(tmp_path)), "t")[0]
    started = Participant(spec)  # as the actor starts: before the fit
    with pytest.raises(TransformMissing, match="participant site-0: the run preprocesses its table"):
        started.describe()
    transform = FittedTransform(numeric=["age", "dose"], means=[50.0, 400.0], stds=[12.0, 90.0])
    started.adopt(transform)  # what the driver sends once
    info = started.describe()
    update = started.train(GlobalState(0, started.initial_parameters(), info["layout"]), Instructions(0, seed=1))
    assert started.spec.transform == transform and update.num_examples > 0


def test_an_actor_ray_restarts_gets_the_transform_again_and_keeps_training(ray_session, tmp_path):
    raw = _config(tmp_path, stop={"max_aggregations": 20}, schedule={"max_failures": 10})
    orch = Orchestrator(load_config(raw))
    killed: list[str] = []

    def kill_once() -> bool:
        members = getattr(orch, "members", {})
        if getattr(orch, "version", 0) >= 2 and members:
            victim = members["site-1"]
            ray.kill(victim.handle, no_restart=False)
            killed.append(victim.name)
            return True
        return False

    history = run_while(orch, kill_once)
    assert killed == ["site-1"]
    kill_row = history[history.event.isin(["failure", "unavailable"]) & (history.participant == "site-1")]
    after = history.index > (kill_row.index.min() if len(kill_row) else -1)
    updates = history[after & (history.event == "update") & (history.participant == "site-1")]
    assert len(updates) >= 1, history[["event", "participant", "version", "detail"]].to_string()
    assert (history.event == "participant_lost").sum() == 0
    # the restarted process said it lacked the transform, and the driver sent it again
    resent = history[(history.participant == "site-1") & history.detail.str.contains("sent it again", na=False)]
    assert len(resent) == 1 and resent.event.iloc[0] == "unavailable"

"""The foundation end to end: a real run on local Ray produces a sane history."""

from __future__ import annotations

from conftest import digits_config

from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator


def test_sync_fedavg_run_learns_and_writes_results(ray_session, tmp_path):
    config = load_config(digits_config(stop={"max_aggregations": 8}))
    history = Orchestrator(config, out_dir=tmp_path).run()

    evals = history[history.event == "evaluation"]
    assert evals.accuracy.iloc[-1] > evals.accuracy.iloc[0] + 0.3
    assert (history.event == "update").sum() == 8 * 4
    assert (history.event == "aggregation").sum() == 8
    for name in ("summary.json", "history.parquet", "config.yaml"):
        assert (tmp_path / name).exists()

"""``fedray profile``: exact sample counting, the suggestion arithmetic, and a real measurement."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import digits_config

from orchestrator.config import load_config
from orchestrator.tools.profile import apply_suggestion, measure, samples_per_task, suggest


def test_samples_per_task_counts_the_short_last_batch():
    assert samples_per_task(100, 32, local_epochs=1, local_steps=None) == 100
    assert samples_per_task(100, 32, local_epochs=2, local_steps=None) == 200
    assert samples_per_task(100, 32, local_epochs=1, local_steps=3) == 96
    assert samples_per_task(100, 32, local_epochs=1, local_steps=5) == 100 + 32


def _two_groups() -> dict:
    group = {"model": {"name": "mlp", "hidden": [16]}, "resources": {"num_cpus": 0.5},
             "train": {"local_steps": 8, "batch_size": 8}}
    return digits_config(groups=[
        {"name": "fast", "count": 1, **group, "system": {"simulated_seconds_per_sample": 0.01}},
        {"name": "slow", "count": 1, **group,
         "system": {"speed": 0.25, "simulated_seconds_per_sample": 0.01}},
    ])


def test_suggestion_equalises_task_time():
    config = load_config(_two_groups())
    measured = pd.DataFrame([
        {"participant": "fast-0", "group": "fast", "task_seconds": 1.0, "num_examples": 100},
        {"participant": "slow-0", "group": "slow", "task_seconds": 4.0, "num_examples": 100},
    ])
    table = suggest(config, measured)
    assert table.loc["slow", "slower_by"] == pytest.approx(4.0)
    assert table.loc["slow", "suggest_local_steps"] == 2
    assert table.loc["fast", "suggest_local_steps"] == 8
    assert table.loc["slow", "suggest_num_cpus"] == 2.0
    applied = load_config(apply_suggestion(config, table))  # still a valid run config
    assert [g.train.local_steps for g in applied.groups] == [8, 2]


def test_measure_reports_rate_memory_and_device_per_participant(ray_session):
    config = load_config(_two_groups())
    measured = measure(config, tasks=2).set_index("participant")

    assert list(measured.index) == ["fast-0", "slow-0"]
    assert (measured.samples_per_task == 64).all()
    # simulated time per sample: 64 * 0.01 s for the fast one, four times that for the slow
    assert measured.loc["slow-0", "samples_per_s"] < 0.5 * measured.loc["fast-0", "samples_per_s"]
    assert (measured.memory_mb > 50).all()
    assert (measured.device == "cpu").all()

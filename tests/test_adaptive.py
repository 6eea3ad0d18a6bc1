"""``schedule.adaptive_local_work``: the arithmetic without Ray, then a real run on Ray
(under the simulated clock: nobody sleeps out the slow participants' seconds)."""

from __future__ import annotations

import pytest
from conftest import digits_config

from orchestrator.config import load_config
from orchestrator.loop.adaptive import AdaptiveLocalWork, base_steps
from orchestrator.loop.run import Orchestrator


def test_steps_scale_with_measured_rate_and_fastest_keeps_full_work():
    work = AdaptiveLocalWork({"a": 20, "b": 20, "c": 20}, smoothing=1.0)
    assert work.steps_for("b") == 20  # unmeasured: full work
    work.observe("a", samples=1000, seconds=1.0)
    work.observe("b", samples=1000, seconds=2.0)
    work.observe("c", samples=1000, seconds=100.0)
    assert [work.steps_for(n) for n in "abc"] == [20, 10, 1]  # never below one step


def test_rate_is_smoothed_and_bad_timings_are_ignored():
    work = AdaptiveLocalWork({"a": 10, "b": 10}, smoothing=0.5)
    work.observe("a", 100, 1.0)
    work.observe("b", 100, 1.0)
    work.observe("b", 100, 0.5)  # 100 then 200 samples/s -> 150
    assert work.rates["b"] == pytest.approx(150.0)
    work.observe("b", 100, 0.0)
    work.observe("b", float("nan"), 1.0)
    assert work.rates["b"] == pytest.approx(150.0)
    assert work.steps_for("a") == round(10 * 100 / 150)


def test_base_steps_from_epochs_or_explicit_steps():
    assert base_steps(num_examples=100, batch_size=32, local_epochs=2, local_steps=None) == 8
    assert base_steps(num_examples=100, batch_size=32, local_epochs=2, local_steps=5) == 5


def _two_speed_config(adaptive: bool) -> dict:
    group = {
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"local_steps": 8, "batch_size": 8, "lr": 0.1},
        "resources": {"num_cpus": 0.5},
        "hosting": "pool",
    }
    # under the simulated clock a task lasts its simulated time (1.3 s for a full fast
    # task, 5 s for a slow one), which the rates measure, whatever the machine's load
    return digits_config(
        clock="simulated",
        groups=[
            {"name": "fast", "count": 2, **group,
             "system": {"speed": 1.0, "simulated_seconds_per_sample": 0.02}},
            {"name": "slow", "count": 2, **group,
             "system": {"speed": 0.25, "simulated_seconds_per_sample": 0.02}},
        ],
        schedule={"mode": "buffered", "buffer_size": 2, "adaptive_local_work": adaptive},
        stop={"max_updates": 12},
    )


def test_adaptive_run_gives_slow_participants_fewer_steps_and_records_them(ray_session):
    history = Orchestrator(load_config(_two_speed_config(adaptive=True))).run()

    dispatch = history[history.event == "dispatch"]
    assert dispatch.local_steps.notna().all()
    first = dispatch.groupby("participant").head(1)
    assert (first.local_steps == 8).all()  # nothing measured yet: full work for everyone
    later = dispatch.drop(first.index)
    # medians: on a heavily loaded machine one task's real time can exceed its simulated
    # time, and the scheduler rightly reacts to that measurement for a task or two
    assert later[later.group == "fast"].local_steps.median() >= 7
    slow = later[later.group == "slow"].local_steps
    assert len(slow) >= 2
    assert 1 <= slow.median() <= 3  # speed 0.25 -> about 8 * 0.25 = 2 steps

    # the point of it: adapted slow tasks take about as long as full fast ones
    updates = history[history.event == "update"]
    adapted = updates[updates.task_id.isin(later.task_id)]
    slow_time = adapted[adapted.group == "slow"].simulated_seconds.median()
    fast_time = updates[updates.group == "fast"].simulated_seconds.median()
    assert slow_time < 1.5 * fast_time


def test_without_the_option_no_steps_are_chosen(ray_session):
    config = _two_speed_config(adaptive=False)
    config["stop"] = {"max_updates": 4}
    history = Orchestrator(load_config(config)).run()
    dispatch = history[history.event == "dispatch"]
    assert dispatch.local_steps.isna().all()

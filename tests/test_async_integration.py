"""Schedules and the straggler simulator on a real local Ray.

Every run here is small (3-5 tiny MLP participants on digits) and ends by a stop
condition; task durations come from ``simulated_seconds_per_sample`` so that who is slow
does not depend on how loaded the machine is. Nothing asserts on timing.

The schedules run under ``clock: simulated``: the same driver loop, with nobody sleeping
out the stragglers' seconds. The killed-participant run stays on the wall clock: its killer
fires on an aggregation while the straggler's task still runs, which a driver waiting on
the straggler (a ``ray.get`` on all) would never reach.
"""

from __future__ import annotations

import ray
from conftest import digits_config

from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator

SPS = 0.0002
"""Simulated seconds per sample: a fast participant's task (~480 samples) lasts ~0.1 s.

Each actor's *first* task can take far longer for real on a loaded machine (torch's lazy
initialisation), so the assertions never rely on the first task's timing."""


def two_groups(fast: dict | None = None, slow: dict | None = None, fast_count: int = 2,
               hosting: str = "pool") -> list:
    """``fast_count`` ordinary participants plus one ``slow`` one, each with its own system."""
    base = digits_config(hosting)["groups"][0]
    return [
        {**base, "name": "fast", "count": fast_count,
         "system": {"simulated_seconds_per_sample": SPS, **(fast or {})}},
        {**base, "name": "slow", "count": 1,
         "system": {"simulated_seconds_per_sample": SPS, **(slow or {})}},
    ]


def rows(history, event: str, **where):
    out = history[history.event == event]
    for column, value in where.items():
        out = out[out[column] == value]
    return out


def test_buffered_keeps_aggregating_and_accepts_the_straggler_stale(ray_session):
    config = load_config(digits_config(
        clock="simulated",
        groups=two_groups(slow={"speed": 0.05}),
        schedule={"mode": "buffered", "buffer_size": 2, "concurrency": 4,
                  "staleness": {"kind": "polynomial", "a": 0.5}},
        stop={"max_aggregations": 60, "max_wall_s": 600},
    ))
    history = Orchestrator(config).run()

    slow_updates = rows(history, "update", participant="slow-0")
    assert len(slow_updates) >= 1, "the straggler's update was never accepted"
    aggregations = rows(history, "aggregation")
    for _, update in slow_updates.iterrows():
        dispatched = rows(history, "dispatch", participant="slow-0", task_id=update.task_id).iloc[0]
        between = aggregations[(aggregations.time > dispatched.time) & (aggregations.time < update.time)]
        # Its update carries exactly the staleness the others' aggregations caused ...
        assert update.base_version == dispatched.version
        assert update.staleness == update.version - update.base_version == len(between)
        # ... and is discounted by s(staleness) = (1 + staleness) ** -0.5.
        assert abs(update.weight - (1 + update.staleness) ** -0.5) < 1e-9
    # The others kept the model moving while the straggler was busy (~2 s a task).
    assert slow_updates.staleness.max() >= 5
    assert history.in_flight.notna().any() and slow_updates.staleness.notna().all()


def test_sync_deadline_closes_rounds_without_the_straggler(ray_session):
    config = load_config(digits_config(
        clock="simulated",
        groups=two_groups(slow={"speed": 0.01}),  # ~10 s a task: it can never make a round
        schedule={"mode": "sync", "deadline_s": 2.0, "late_updates": "drop"},
        stop={"max_aggregations": 3, "max_wall_s": 600},
    ))
    history = Orchestrator(config).run()

    aggregations = rows(history, "aggregation")
    assert len(aggregations) == 3
    # Round 1 selected the straggler too, yet closed at its deadline without it, and the
    # next rounds went on while its task was still running.
    first_dispatch = rows(history, "dispatch", participant="slow-0").iloc[0]
    assert first_dispatch.version == 0
    assert rows(history, "update", participant="slow-0").empty
    assert rows(history, "update", group="fast").staleness.eq(0).all()
    assert aggregations.detail.str.contains("mean staleness 0.00").all()
    assert rows(history, "stop").detail.iloc[0] == "reached max_aggregations=3"


def test_sync_deadline_carries_late_update_with_its_staleness(ray_session):
    config = load_config(digits_config(
        clock="simulated",
        groups=two_groups(slow={"speed": 0.1}),
        schedule={"mode": "sync", "deadline_s": 0.6, "late_updates": "carry",
                  "staleness": {"kind": "constant"}},
        stop={"max_aggregations": 12, "max_wall_s": 600},
    ))
    history = Orchestrator(config).run()

    carried = rows(history, "update", participant="slow-0")
    assert len(carried) >= 1
    assert (carried.staleness >= 1).any()
    assert (carried.detail == "carried").all()
    assert (carried.staleness == carried.version - carried.base_version).all()


class KillStragglerMidTask:
    """A progress listener that really ``ray.kill``s ``slow-0`` while its first task runs.

    It kills only while the driver has a task of ``slow-0`` in flight (~2 s each), so
    the kill lands mid-task.
    """

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator, self.killed = orchestrator, False

    def on_event(self, row: dict) -> None:
        straggler = self.orchestrator.members["slow-0"]
        if row["event"] == "aggregation" and row["version"] >= 2 and straggler.busy and not self.killed:
            self.killed = True
            ray.kill(straggler.handle, no_restart=True)

    def close(self) -> None:
        pass


def test_killed_participant_is_a_failure_and_the_run_completes(ray_session):
    config = load_config(digits_config(
        groups=two_groups(slow={"speed": 0.05}, hosting="dedicated"),  # the actor, not a worker
        schedule={"mode": "buffered", "buffer_size": 2},
        stop={"max_aggregations": 25, "max_wall_s": 600},
    ))
    orchestrator = Orchestrator(config)
    killer = orchestrator.progress = KillStragglerMidTask(orchestrator)
    history = orchestrator.run()

    assert killer.killed
    assert len(rows(history, "failure", participant="slow-0")) == 1
    assert len(rows(history, "participant_lost", participant="slow-0")) == 1
    assert len(rows(history, "aggregation")) == 25
    assert rows(history, "stop").detail.iloc[0] == "reached max_aggregations=25"
    evals = rows(history, "evaluation")
    assert evals.accuracy.notna().all() and evals.accuracy.iloc[-1] > 0.5


def test_a_group_that_always_drops_never_deadlocks_sync(ray_session):
    config = load_config(digits_config(
        clock="simulated",
        groups=two_groups(slow={"dropout_prob": 1.0}),
        schedule={"mode": "sync"},
        stop={"max_aggregations": 4, "max_wall_s": 600},
    ))
    history = Orchestrator(config).run()

    assert len(rows(history, "aggregation")) == 4
    assert len(rows(history, "dropout", participant="slow-0")) == 4
    assert rows(history, "update", participant="slow-0").empty


def test_everyone_dropping_ends_the_run_as_stalled(ray_session):
    config = load_config(digits_config(
        clock="simulated",
        groups=two_groups(fast={"dropout_prob": 1.0}, slow={"dropout_prob": 1.0}, fast_count=1),
        schedule={"mode": "sync"},
        stop={"max_aggregations": 4},
    ))
    history = Orchestrator(config).run()

    assert rows(history, "aggregation").empty
    assert len(rows(history, "round_skipped")) >= 1
    assert rows(history, "stop").detail.iloc[0].startswith("stalled")


def test_buffered_with_a_dropping_group_keeps_going(ray_session):
    config = load_config(digits_config(
        clock="simulated",
        groups=two_groups(slow={"dropout_prob": 1.0}),
        schedule={"mode": "buffered", "buffer_size": 2},
        stop={"max_aggregations": 6, "max_wall_s": 600},
    ))
    history = Orchestrator(config).run()

    assert len(rows(history, "aggregation")) == 6
    assert len(rows(history, "dropout", participant="slow-0")) >= 1


def test_availability_windows_take_a_participant_away_and_back(ray_session):
    config = load_config(digits_config(
        clock="simulated",
        groups=two_groups(slow={"availability": {"on_s": 1.0, "off_s": 1.0, "phase_s": 0.0}}),
        schedule={"mode": "async", "concurrency": 4},
        stop={"max_aggregations": 80},
    ))
    history = Orchestrator(config).run()

    offline = rows(history, "unavailable", participant="slow-0")
    assert len(offline) >= 1
    assert offline.detail.str.contains("offline until").all()
    slow_updates = rows(history, "update", participant="slow-0")
    assert (slow_updates.time > offline.time.min()).any(), "never used again after coming back"

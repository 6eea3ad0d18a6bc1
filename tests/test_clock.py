"""The simulated clock: task durations from the system model, results in simulated-time
order, and runs that come out the same whatever the machine's load."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import ray
from conftest import digits_config, run_while

from actors.participant.system import simulated_duration, task_duration
from actors.spec.system import SystemSpec
from orchestrator.cluster.members import Member
from orchestrator.cluster.participants import Participants
from orchestrator.config import ConfigError, load_config
from orchestrator.loop.clock import SimulatedClock
from orchestrator.loop.run import Orchestrator
from orchestrator.loop.schedules import Task
from orchestrator.records.history import History
from orchestrator.server.privacy import PrivacyHooks


def test_a_task_lasts_samples_times_seconds_per_sample_over_speed_plus_the_link():
    system = SystemSpec(simulated_seconds_per_sample=0.01, bandwidth_mbps=8.0)
    # 128 samples at half speed: 2.56 s; 1 MB down and up at 8 Mbit/s: 2 s
    assert simulated_duration(system, speed=0.5, samples=128, nbytes=1_000_000) == pytest.approx(4.56)
    assert simulated_duration(SystemSpec(simulated_seconds_per_sample=0.01), 1.0, 100, 10**9) == pytest.approx(1.0)
    # the wall clock never makes a task shorter than it really took
    assert task_duration(5.0, 128, 0.5, system, 1_000_000) == 5.0


def test_results_come_back_in_simulated_time_order_not_real_order(ray_session):
    clock = SimulatedClock()
    refs = [ray.put(i) for i in range(3)]  # all really done at once
    for ref, (due, task_id) in zip(refs, [(5.0, 0), (1.0, 1), (5.0, 2)], strict=True):
        clock.started(ref, 0.0, task_id, due)
    in_flight = list(refs)
    assert clock.wait(in_flight, timeout=0.5) == [] and clock.now() == 0.5  # nothing due yet
    order = []
    while in_flight:
        (ref,) = clock.wait(in_flight, timeout=None)
        in_flight.remove(ref)
        order.append((ray.get(ref), clock.now()))
    assert order == [(1, 1.0), (0, 5.0), (2, 5.0)]  # ties go to the earlier task


def test_simulated_clock_needs_seconds_per_sample_and_refuses_real_hangs():
    group = {"name": "site", "count": 2}
    with pytest.raises(ConfigError, match=r"groups\[0\] \(site\).*simulated_seconds_per_sample"):
        load_config(digits_config(groups=[group], clock="simulated"))
    hanging = {**group, "system": {"simulated_seconds_per_sample": 0.01, "hang_prob": 0.5}}
    with pytest.raises(ConfigError, match="dropout_prob"):
        load_config(digits_config(groups=[hanging], clock="simulated"))
    with pytest.raises(ConfigError, match="clock"):
        load_config(digits_config(clock="lunar"))


FLEET = {  # 6 participants whose speeds differ 10x and more: lognormal(sigma=1), on 2 workers
    "name": "site", "count": 6, "model": {"name": "mlp", "hidden": [16]}, "hosting": "pool", "workers": 2,
    "train": {"local_steps": 4, "batch_size": 32, "lr": 0.2}, "resources": {"num_cpus": 0.25},
    "system": {"simulated_seconds_per_sample": 0.01, "speed": {"kind": "lognormal", "sigma": 1.0},
               "dropout_prob": 0.3},
}


def _fedbuff(**extra) -> dict:
    return digits_config(groups=[FLEET], clock="simulated", stop={"max_aggregations": 12},
                         schedule={"mode": "buffered", "buffer_size": 2, "concurrency": 4}, **extra)


def _trace(history) -> list[tuple]:
    rows = history[history.event.isin(["update", "dropout", "aggregation"])]
    return list(zip(rows.event, rows.participant.fillna(""), rows.version, rows.staleness.fillna(-1),
                    rows.time.round(9), strict=True))


def test_a_simulated_run_is_the_same_on_a_quiet_and_on_a_loaded_machine(ray_session):
    quiet = Orchestrator(load_config(_fedbuff()))
    quiet_history = quiet.run()
    hogs: list[subprocess.Popen] = []
    loaded = Orchestrator(load_config(_fedbuff()))

    def load_once_running() -> bool:  # more busy processes than cores, from the first dispatch
        if loaded.state is None:
            return False
        hogs.extend(subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3))
        return True

    try:
        loaded_history = run_while(loaded, load_once_running, every=0.001)
    finally:
        for hog in hogs:
            hog.kill()
    assert len(hogs) == 3
    assert _trace(quiet_history) == _trace(loaded_history)
    np.testing.assert_array_equal(quiet.params, loaded.params)
    updates = quiet_history[quiet_history.event == "update"]
    assert (updates.staleness > 0).any() and (quiet_history.event == "dropout").any()
    # the history keeps both clocks: nobody sleeps, so the simulated seconds from the first
    # dispatch to the end far outrun the real ones
    first = quiet_history[quiet_history.event == "dispatch"].index[0]
    span = quiet_history.loc[first:].iloc[[0, -1]]
    assert span.time.diff().iloc[-1] > 5 * span.wall_time.diff().iloc[-1]
    assert quiet_history.time.is_monotonic_increasing


def test_simulated_task_durations_follow_speed_and_too_slow_tasks_time_out_without_a_kill(ray_session):
    slow = {**FLEET, "name": "slow", "count": 1, "workers": 1,
            "system": {"simulated_seconds_per_sample": 0.01, "speed": 0.05}}  # 128 samples: 25.6 s
    fast = {**FLEET, "count": 2, "system": {"simulated_seconds_per_sample": 0.01}}  # 1.28 s
    raw = digits_config(groups=[fast, slow], clock="simulated", stop={"max_aggregations": 24},
                        schedule={"mode": "async", "task_timeout_s": 10.0, "concurrency": 3})
    history = Orchestrator(load_config(raw)).run()
    dispatch = history[history.event == "dispatch"].set_index("task_id").time
    updates = history[history.event == "update"]
    durations = updates.time.to_numpy() - dispatch.loc[updates.task_id].to_numpy()
    assert np.allclose(durations, 1.28) and set(updates.participant) == {"site-0", "site-1"}
    timeouts = history[history.event == "timeout"]
    assert set(timeouts.participant) == {"slow-0"}
    assert np.allclose(timeouts.time.to_numpy() - dispatch.loc[timeouts.task_id].to_numpy(), 10.0)
    assert not (history.event == "participant_lost").any()


@ray.remote(num_cpus=0)
class _Stuck:
    def hang(self) -> None:
        time.sleep(3600)


def test_a_task_that_really_hangs_ends_as_a_timeout_failure_not_a_frozen_driver(ray_session):
    config = load_config(digits_config())
    history = History()
    participants = Participants(config, history, PrivacyHooks(config.privacy, config),
                                SimulatedClock(real_timeout_s=0.5))
    member = Member("site-0", "site", 0, _Stuck.options(max_restarts=0).remote(), None, max_restarts=0, busy=True)
    participants.members[member.name] = member
    ref = member.handle.hang.remote()
    participants.in_flight[ref] = Task(member.name, 0, 0, 0, 0.0)
    participants.clock.started(ref, 0.0, 0, 2.0)
    assert participants.wait(None) == [ref]  # after 0.5 real seconds, not an hour
    assert participants.clock.now() == 0.0  # it never landed: simulated time did not move
    assert participants.receive(ref, 0).update is None
    timeout = [row for row in history.rows if row["event"] == "timeout"]
    assert len(timeout) == 1 and "real time" in timeout[0]["detail"]
    assert member.lost and not participants.in_flight

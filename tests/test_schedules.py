"""The schedule policies' decisions, driven by hand: no Ray, no participants."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from orchestrator.config import BufferedSchedule, Schedule, SyncSchedule
from orchestrator.loop.schedules import Async, Buffered, SyncRounds, Task, make_schedule

NAMES = [f"p{i}" for i in range(6)]
SCHEDULE = TypeAdapter(Schedule)


def policy(seed: int = 0, **fields):
    return make_schedule(SCHEDULE.validate_python(fields), seed=seed)


def task(participant: str, round_: int, base_version: int = 0, task_id: int = 0) -> Task:
    return Task(participant, task_id, base_version, round_, dispatched_at=0.0)


def test_make_schedule_picks_the_class_by_mode():
    assert type(policy(mode="sync")) is SyncRounds
    assert type(policy(mode="buffered")) is Buffered
    assert type(policy(mode="async")) is Async
    assert type(policy()) is SyncRounds  # mode omitted


def test_each_policy_declares_what_it_can_do():
    assert SyncRounds.supports_secure_aggregation and Buffered.supports_secure_aggregation
    assert not Async.supports_secure_aggregation and Async.no_secure_aggregation_because
    # a too-small secure cohort: a FedBuff buffer waits for more, a sync round is aborted
    assert Buffered.waits_for_cohort and not SyncRounds.waits_for_cohort
    assert not Async.waits_for_cohort
    assert SyncRounds.max_cohort(SyncSchedule(clients_per_round=3), 8) == (3, "schedule.clients_per_round")
    assert SyncRounds.max_cohort(SyncSchedule(), 8) == (8, "participants in the run")
    assert Buffered.max_cohort(BufferedSchedule(concurrency=2), 8) == (8, "participants in the run")


# -- sync ---------------------------------------------------------------------------------


def test_sync_selects_once_per_round_and_waits_for_everyone():
    p = policy(mode="sync", clients_per_round=3)
    picked = p.select(NAMES, busy=0, alive=6, now=0.0)
    assert len(picked) == 3 and set(picked) <= set(NAMES) and p.round == 1
    assert p.select(NAMES, busy=3, alive=6, now=0.1) == []  # round still open

    for i, name in enumerate(picked[:2]):
        p.task_finished(task(name, 1, task_id=i))
        assert p.admit(task(name, 1), staleness=0).weight == 1.0
        assert not p.ready(i + 1, now=1.0)
    p.task_finished(task(picked[2], 1))
    assert p.admit(task(picked[2], 1), staleness=0).accepted
    assert p.ready(3, now=1.0)
    assert p.deadline() is None

    p.aggregated(now=1.0)
    assert len(p.select(NAMES, busy=0, alive=6, now=1.0)) == 3 and p.round == 2


def test_sync_round_closes_when_selected_fail_instead_of_waiting_forever():
    p = policy(mode="sync", clients_per_round=2)
    a, b = p.select(NAMES, busy=0, alive=6, now=0.0)
    p.task_finished(task(a, 1))  # a dropped out: finished, never admitted
    assert not p.ready(0, now=5.0)
    p.task_finished(task(b, 1))
    assert p.ready(0, now=5.0)  # nothing arrived, but nothing more can


def test_sync_over_selection_closes_on_the_first_clients_per_round():
    p = policy(mode="sync", clients_per_round=4, over_select=0.5)
    picked = p.select(NAMES, busy=0, alive=6, now=0.0)
    assert len(picked) == 6  # ceil(4 * 1.5)
    for name in picked[:3]:
        p.admit(task(name, 1), 0)
    assert not p.ready(3, now=0.5)
    p.admit(task(picked[3], 1), 0)
    assert p.ready(4, now=0.5)
    p.aggregated(now=0.5)
    # The two stragglers of round 1 land during round 2: late, dropped by default.
    p.select(NAMES[:0], busy=2, alive=6, now=0.6)
    late = p.admit(task(picked[4], 1), staleness=1)
    assert not late.accepted and "round 1" in late.reason


def test_sync_deadline_closes_the_round_and_is_the_next_wakeup():
    p = policy(mode="sync", deadline_s=2.0)
    p.select(NAMES[:2], busy=0, alive=2, now=10.0)
    assert p.deadline() == 12.0
    assert not p.ready(0, now=11.9)
    assert p.ready(0, now=12.0)
    p.aggregated(now=12.0)
    assert p.deadline() is None


def test_sync_carry_admits_late_updates_with_their_staleness_weight():
    p = policy(mode="sync", late_updates="carry", staleness={"kind": "polynomial", "a": 1.0},
               max_staleness=3)
    p.select(NAMES[:2], busy=0, alive=2, now=0.0)
    p.aggregated(now=1.0)
    p.select(NAMES[:1], busy=1, alive=2, now=1.0)  # round 2
    carried = p.admit(task("p1", 1), staleness=1)
    assert carried.accepted and carried.weight == pytest.approx(0.5) and carried.reason == "carried"
    assert p.received == 0  # a carried update does not count towards this round's quota
    assert not p.admit(task("p1", 1), staleness=4).accepted  # beyond max_staleness


def test_sync_with_nobody_idle_opens_no_round():
    p = policy(mode="sync")
    assert p.select([], busy=2, alive=2, now=0.0) == [] and p.round == 0
    assert not p.ready(0, now=0.0)


# -- buffered (FedBuff) -------------------------------------------------------------------


def test_buffered_keeps_concurrency_busy():
    p = policy(mode="buffered", concurrency=4, buffer_size=3)
    assert len(p.select(NAMES, busy=0, alive=6, now=0.0)) == 4
    assert len(p.select(NAMES[4:], busy=3, alive=6, now=0.0)) == 1
    assert p.select(NAMES[4:], busy=4, alive=6, now=0.0) == []
    # fewer alive than the concurrency asked for: everyone who is alive works
    assert len(p.select(NAMES[:2], busy=0, alive=2, now=0.0)) == 2


def test_buffered_aggregates_every_buffer_size_with_staleness_weights():
    p = policy(mode="buffered", buffer_size=3, staleness={"kind": "hinge", "a": 1.0, "b": 1})
    assert [p.ready(n, now=0.0) for n in range(5)] == [False, False, False, True, True]
    assert p.admit(task("p0", 0), staleness=1).weight == 1.0
    assert p.admit(task("p0", 0), staleness=3).weight == pytest.approx(1 / 3)


def test_buffered_drops_updates_beyond_max_staleness():
    p = policy(mode="buffered", max_staleness=2)
    assert p.admit(task("p0", 0), staleness=2).accepted
    refused = p.admit(task("p0", 0), staleness=3)
    assert not refused.accepted and "max_staleness" in refused.reason


# -- async (FedAsync) ---------------------------------------------------------------------


def test_async_applies_every_update_with_alpha_times_staleness():
    p = policy(mode="async", alpha=0.5, staleness={"kind": "polynomial", "a": 0.5})
    assert not p.ready(0, now=0.0) and p.ready(1, now=0.0)
    assert p.admit(task("p0", 0), staleness=0).weight == pytest.approx(0.5)
    assert p.admit(task("p0", 0), staleness=3).weight == pytest.approx(0.25)


def test_selection_is_reproducible_from_the_seed():
    first = policy(mode="buffered", concurrency=3).select(NAMES, busy=0, alive=6, now=0.0)
    again = policy(mode="buffered", concurrency=3).select(NAMES, busy=0, alive=6, now=0.0)
    assert first == again


# -- checkpoint state ---------------------------------------------------------------------


def _sync_steps(p) -> list:
    """Drive a sync policy through a round and a half; what it decides along the way."""
    out = []
    for now in (1.0, 2.0, 3.0):
        picked = p.select(NAMES, busy=0, alive=6, now=now)
        for name in picked[:2]:
            p.task_finished(task(name, p.round))
            out.append(p.admit(task(name, p.round), staleness=0).accepted)
        out += [picked, p.round, p.ready(2, now=now + 0.5), p.deadline()]
        p.aggregated(now=now + 0.5)
    return out


@pytest.mark.parametrize("fields", [
    {"mode": "sync", "clients_per_round": 3, "over_select": 0.5, "deadline_s": 4.0},
    {"mode": "buffered", "concurrency": 3, "buffer_size": 2},
    {"mode": "async", "concurrency": 2},
])
def test_state_dict_round_trip_reproduces_the_same_future(fields):
    p = policy(**fields)
    p.select(NAMES, busy=0, alive=6, now=0.0)  # mid-run: a round open, the generator moved on
    p.task_finished(task(NAMES[0], p.round))
    state = p.state_dict()
    expected = _sync_steps(p) if fields["mode"] == "sync" else [
        p.select(NAMES, busy=b, alive=6, now=0.0) for b in (0, 1, 2, 0)]

    q = policy(seed=99, **fields)  # another seed: only the state can make them agree
    q.load_state_dict(state)
    got = _sync_steps(q) if fields["mode"] == "sync" else [
        q.select(NAMES, busy=b, alive=6, now=0.0) for b in (0, 1, 2, 0)]
    assert got == expected


def test_state_dict_is_a_copy_and_names_its_policy():
    p = policy(mode="sync", clients_per_round=2)
    p.select(NAMES, busy=0, alive=6, now=0.0)
    state = p.state_dict()
    p.aggregated(now=1.0)
    p.select(NAMES, busy=0, alive=6, now=1.0)
    assert state["round"] == 1 and state["open"] and len(state["selected"]) == 2
    with pytest.raises(ValueError, match="schedule state is for SyncRounds, not Buffered"):
        policy(mode="buffered").load_state_dict(state)

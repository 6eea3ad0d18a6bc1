"""The driver's participant lifecycle, without a running Ray: how each way a task can end
is classified and counted. The exceptions are Ray's own classes, as Ray raises them."""

from __future__ import annotations

import time

import ray
from conftest import digits_config

from actors.data.tables import DataError
from orchestrator.cluster.members import RESTART_BACKOFF_S, Member, error_message
from orchestrator.cluster.participants import Participants
from orchestrator.config import load_config
from orchestrator.loop.clock import SimulatedClock, WallClock
from orchestrator.loop.schedules import Task
from orchestrator.records.history import History
from orchestrator.records.results import FAILURE_EVENTS
from orchestrator.server.privacy import PrivacyHooks


def lifecycle(max_restarts: int = -1, **overrides) -> tuple[Participants, Member, History]:
    config = load_config(digits_config(**overrides))
    history = History()
    clock = SimulatedClock()
    clock.sleep(10.0)
    participants = Participants(config, history, PrivacyHooks(config.privacy, config), clock)
    member = Member("site-0", "site", 0, handle=None, spec=None, max_restarts=max_restarts)
    participants.members[member.name] = member
    return participants, member, history


def where(member: Member) -> dict:
    return member.where(Task(member.name, 1, 0, 1, 0.0), version=0)


def test_an_actor_ray_restarts_counts_once_as_a_failure_and_then_backs_off():
    participants, member, history = lifecycle(clock="wall")
    participants.clock = WallClock()
    restarting = ray.exceptions.ActorUnavailableError("restarting", None)
    participants.failed(member, where(member), restarting)  # it died while idle
    participants.failed(member, where(member), restarting)  # still coming back
    events = [row["event"] for row in history.rows]
    assert events == ["failure", "unavailable"]  # one death, one failure in the summary
    assert sum(e in FAILURE_EVENTS for e in events) == 1
    assert member.retry_at >= RESTART_BACKOFF_S and not member.lost and member.failures == 0


def test_under_the_simulated_clock_a_restart_is_waited_out_in_real_time_not_simulated_time():
    """A restart takes real seconds: advancing simulated time instead would make the history
    depend on how fast the machine restarts a process."""
    participants, member, history = lifecycle()
    restarting = ray.exceptions.ActorUnavailableError("restarting", None)
    started = time.monotonic()
    participants.failed(member, where(member), restarting)
    participants.failed(member, where(member), restarting)  # the same actor: no second wait
    assert time.monotonic() - started >= RESTART_BACKOFF_S  # (a lower bound: sleeps never end early)
    assert participants.clock.now() == 10.0 and member.retry_at <= 10.0
    assert [row["event"] for row in history.rows] == ["failure", "unavailable"]


def test_a_death_seen_by_a_task_in_flight_is_not_counted_again_while_ray_restarts_it():
    participants, member, history = lifecycle()
    participants.failed(member, where(member), ray.exceptions.RayActorError(error_msg="killed"))
    participants.failed(member, where(member), ray.exceptions.ActorUnavailableError("restarting", None))
    assert [row["event"] for row in history.rows] == ["failure", "unavailable"]


def test_an_actor_that_may_not_restart_is_lost_at_its_death():
    participants, member, history = lifecycle(max_restarts=0)
    participants.failed(member, where(member), ray.exceptions.RayActorError(error_msg="killed"))
    assert member.lost and [row["event"] for row in history.rows] == ["failure", "participant_lost"]


def test_a_failed_participants_masking_key_is_forgotten():
    """Its restarted process has a new key: relaying the old one would garble the sum."""
    participants, member, _ = lifecycle(privacy={"secure_aggregation": True})
    participants.privacy.public_keys = {"site-0": b"old key", "site-1": b"other"}
    participants.failed(member, where(member), ray.exceptions.ActorUnavailableError("restarting", None))
    assert participants.privacy.public_keys == {"site-1": b"other"}


def test_errors_are_told_apart_by_type_and_show_the_participants_own_message():
    cause = DataError("participant site-0: data file not found: /nowhere.csv")
    task_error = ray.exceptions.RayTaskError("describe", "Traceback ...", cause).as_instanceof_cause()
    assert isinstance(task_error, DataError)  # what ray.get raises: catchable by type
    assert error_message(task_error) == "DataError: participant site-0: data file not found: /nowhere.csv"
    assert error_message(ray.exceptions.RayActorError(error_msg="The actor died.\nmore")) == "The actor died."

"""Failures survived on a real local Ray: killed actors, hung tasks, too few participants,
and updates that claim to come from someone else."""

from __future__ import annotations

import random

import ray
from conftest import digits_config, run_while

from actors.participant.participant import Participant
from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator

TINY = {"model": {"name": "mlp", "hidden": [16]}, "train": {"local_steps": 4, "batch_size": 32, "lr": 0.2}}


def _group(name: str, count: int, **extra) -> dict:
    return {"name": name, "count": count, **TINY, "resources": {"num_cpus": 0.5}, **extra}


ROUNDS = 18


def test_random_kills_every_three_aggregations_cost_little_and_count_nothing_twice(ray_session, tmp_path):
    """18 aggregations; every 3 a random participant is killed mid-task and restarted."""
    group = _group("site", 4, resources={"num_cpus": 0.5, "max_restarts": -1},
                   system={"simulated_seconds_per_sample": 0.002})  # tasks last ~0.25 s
    raw = digits_config(groups=[group], stop={"max_aggregations": ROUNDS},
                        schedule={"max_failures": ROUNDS}, evaluation={"every": ROUNDS})
    # the same run without kills, pooled (the same model as dedicated: tests/test_pool.py), on warm workers
    baseline = Orchestrator(load_config({**raw, "groups": [{**group, "hosting": "pool"}]})).run()

    orch = Orchestrator(load_config(raw), out_dir=tmp_path)
    killed: list[tuple[int, str]] = []
    rng = random.Random(0)
    next_kill = 1

    def chaos() -> bool:
        nonlocal next_kill
        version = getattr(orch, "version", 0)
        busy = [m for m in getattr(orch, "members", {}).values() if m.busy and not m.lost]
        if version >= next_kill and busy and version < ROUNDS:
            victim = rng.choice(busy)
            ray.kill(victim.handle, no_restart=False)
            killed.append((version, victim.name))
            next_kill = version + 3
        return False

    history = run_while(orch, chaos)

    assert len(killed) >= 5
    # a task in flight on a killed actor fails ("failure", or "unavailable" while Ray restarts it)
    failures = history[history.event.isin(["failure", "unavailable"])]
    assert len(failures) >= 1 and set(failures.participant) <= {name for _, name in killed}
    assert (history.event == "participant_lost").sum() == 0  # restarted actors rejoined
    assert (history.event == "aggregation").sum() == ROUNDS
    updates = history[history.event == "update"]
    assert updates.task_id.is_unique
    assert set(updates.task_id) <= set(history[history.event == "dispatch"].task_id)
    assert set(updates.task_id).isdisjoint(set(failures.task_id.dropna()))
    # every aggregation counts exactly the updates admitted since the one before: a task
    # cut short by a kill adds nothing, and nothing is counted twice
    rows = history[history.event.isin(["update", "aggregation"])]
    admitted = (rows.event == "aggregation").astype(int).shift(fill_value=0).cumsum()
    per_round = rows[rows.event == "update"].groupby(admitted).num_examples.sum()
    aggregated = rows[rows.event == "aggregation"].num_examples.to_numpy()
    assert list(per_round.to_numpy()) == list(aggregated)
    # Accuracy only checks that no failure corrupted the model: how many rounds a restart
    # misses depends on machine speed. Clean runs of this workload with 2, 3 or 4 of the 4
    # updates per round ended within 0.036 of each other for each of seeds 0-2 (seed 0:
    # 0.794-0.802; measured with clients_per_round); a corrupted model lands far lower.
    final = history[history.event == "evaluation"].accuracy.iloc[-1]
    clean = baseline[baseline.event == "evaluation"].accuracy.iloc[-1]
    assert final >= clean - 0.05, (final, clean)


# The healthy group may restart: on a badly overloaded machine one of its tasks could
# itself outlast the timeout, which must not make these tests flaky.
HEALTHY = {"num_cpus": 0.5, "max_restarts": -1}


def test_hung_participant_times_out_and_the_run_goes_on(ray_session):
    raw = digits_config(
        groups=[_group("ok", 2, resources=HEALTHY, hosting="pool"),  # warm workers (test_pool: hung pooled tasks)
                _group("stuck", 1, system={"hang_prob": 1.0}, hosting="dedicated")],
        schedule={"task_timeout_s": 3.0, "max_failures": 10}, stop={"max_aggregations": 3},
    )
    orch = Orchestrator(load_config(raw))
    history = orch.run()
    timeouts = history[history.event == "timeout"]
    assert "stuck-0" in set(timeouts.participant)
    assert history[history.event == "participant_lost"].participant.tolist() == ["stuck-0"]
    assert (history.event == "aggregation").sum() == 3
    assert set(history[history.event == "update"].participant) == {"ok-0", "ok-1"}
    assert orch.summary["stop_reason"] == "reached max_aggregations=3"


def test_too_few_participants_end_the_run_cleanly_with_a_reason(ray_session, tmp_path):
    raw = digits_config(
        groups=[_group("ok", 2, resources=HEALTHY, hosting="pool"),  # warm workers (test_pool: hung pooled tasks)
                _group("stuck", 1, system={"hang_prob": 1.0}, hosting="dedicated")],
        schedule={"task_timeout_s": 3.0, "min_participants": 3, "max_failures": 10},
        stop={"max_aggregations": 5},
    )
    orch = Orchestrator(load_config(raw), out_dir=tmp_path)
    history = orch.run()
    reason = orch.summary["stop_reason"]
    assert "only 2 participants left" in reason and "min_participants=3" in reason
    assert orch.summary["participants_lost"] == 1
    assert history.event.iloc[-1] == "stop"
    assert (tmp_path / "summary.json").exists() and (tmp_path / "global_params.npy").exists()


def test_update_from_a_participant_not_in_the_run_is_rejected(ray_session, monkeypatch):
    class Impostor(Participant):  # defined here so Ray ships it by value to the workers
        def train(self, state, instructions):
            update = super().train(state, instructions)
            if self.spec.name == "site-1":
                update.participant = "mallory-7"
            return update

    monkeypatch.setattr("actors.participant.participant.Participant", Impostor)  # the dedicated actor class
    raw = digits_config(groups=[_group("site", 3)], stop={"max_aggregations": 2})
    history = Orchestrator(load_config(raw)).run()
    rejected = history[history.event == "rejected"]
    assert len(rejected) == 2 and set(rejected.participant) == {"site-1"}
    assert rejected.detail.str.contains("'mallory-7' \\(not a participant of this run\\)").all()
    assert "site-1" not in set(history[history.event == "update"].participant)
    assert (history.event == "aggregation").sum() == 2

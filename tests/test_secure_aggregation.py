"""Secure aggregation: exact mask cancellation, masked vectors that reveal nothing,
recovery when a member dies after its update arrived, and real sync and FedBuff runs."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from conftest import digits_config

from actors.participant.participant import Participant
from actors.participant.secure_aggregation import (
    MAX_SEALED,
    MaskingKey,
    SealedUpdates,
    contribution,
)
from orchestrator.cluster.members import Member
from orchestrator.cluster.specs import participant_specs
from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator
from orchestrator.server.privacy import PrivacyHooks
from strategies.fedavg import FedAvg
from strategies.secure_aggregation import decode, encode, unmask_sum
from strategies.types import GlobalState, Instructions

NAMES = ["a", "b", "c", "d"]


def _cohort(size: int, seed: int = 0, clip_norm: float | None = None):
    """Four members; "b" holds two updates in the cohort (FedBuff can do that)."""
    rng = np.random.default_rng(seed)
    keys = {n: MaskingKey.generate() for n in NAMES}
    peers = {n: k.public_bytes for n, k in keys.items()}
    updates = {(n, t): rng.normal(0, 0.05, size).astype(np.float32)
               for n, t in [("a", 0), ("b", 1), ("b", 5), ("c", 2), ("d", 3)]}
    counts = {n: int(c) for n, c in zip(NAMES, rng.integers(10, 500, len(NAMES)))}
    weights = {1: 1.0, 5: 0.5, 0: 0.25, 2: 1.0, 3: 0.8}  # staleness weights by task id
    sealed = {n: SealedUpdates() for n in NAMES}
    for (n, t), d in updates.items():
        assert sealed[n].hold(t, d, counts[n])
    masked = {n: sealed[n].mask(n, keys[n], 3, peers, {t: weights[t] for (m, t) in updates if m == n}, clip_norm)
              for n in NAMES}
    plain = {n: sum(weights[t] * counts[n] * d.astype(np.float64) for (m, t), d in updates.items() if m == n)
             for n in NAMES}
    return keys, peers, plain, counts, masked


def test_encoding_round_trips_within_fixed_point_precision():
    x = np.array([-3.5, 0.0, 1e-6, 12345.678], np.float64)
    np.testing.assert_allclose(decode(encode(x)), x, atol=2**-24)
    assert np.allclose(decode(encode(x) + encode(-x)), 0)


def test_masks_cancel_and_the_sum_matches_the_plain_weighted_sum():
    size = 5000
    _, _, updates, counts, masked = _cohort(size)
    total = unmask_sum(list(masked.values()))
    plain = sum(updates.values())
    # the count is the example total, staleness weights scale only the deltas (FedAvg's rule)
    assert total[-1] == pytest.approx(sum(counts.values()) + counts["b"], abs=1e-6)
    rel = np.linalg.norm(total[:size] - plain) / np.linalg.norm(plain)
    assert rel < 1e-5


def test_each_masked_vector_is_uncorrelated_with_its_update():
    size = 20000
    _, _, updates, counts, masked = _cohort(size, seed=1)
    for n in NAMES:
        seen = masked[n][:size].astype(np.float64)  # what the driver holds
        corr = np.corrcoef(seen, updates[n])[0, 1]
        assert abs(np.corrcoef(decode(masked[n])[:size], updates[n])[0, 1]) < 0.05
        assert abs(corr) < 0.05, (n, corr)
        # and its bits look uniform: the high bit is set about half the time
        assert 0.45 < float(np.mean(masked[n] >> np.uint64(63))) < 0.55


def test_a_participant_dropping_after_masking_is_recovered_by_the_survivors():
    size = 3000
    keys, peers, updates, counts, masked = _cohort(size, seed=2)
    dropped = ["c"]
    survivors = [n for n in NAMES if n not in dropped]
    broken = unmask_sum([masked[n] for n in survivors])
    plain = sum(updates[n] for n in survivors)
    assert np.linalg.norm(broken[:size] - plain) > 1e3 * np.linalg.norm(plain)  # masks left over
    recovered = [keys[n].masks_with(n, dropped, peers, 3, size + 1) for n in survivors]
    total = unmask_sum([masked[n] for n in survivors], recovered)
    assert np.linalg.norm(total[:size] - plain) / np.linalg.norm(plain) < 1e-5




def test_under_dp_each_delta_is_clipped_and_counts_once():
    big, small = np.full(100, 1.0, np.float32), np.full(100, 0.001, np.float32)
    out = contribution([(big, 300, 0.5), (small, 300, 1.0)], clip_norm=2.0)
    assert np.linalg.norm(out[:100] - 0.001) == pytest.approx(0.5 * 2.0, rel=1e-6)
    assert out[100] == 2.0  # each update counts once, whatever its example count


def test_sealed_updates_refuse_non_finite_and_forget_what_was_never_aggregated():
    sealed, key = SealedUpdates(), MaskingKey.generate()
    peers = {"a": key.public_bytes}
    assert not sealed.hold(0, np.array([1.0, np.nan], np.float32), 5)
    for task in range(1, MAX_SEALED + 3):
        assert sealed.hold(task, np.ones(2, np.float32), 5)
    with pytest.raises(LookupError, match=r"participant a: holds no sealed update for task\(s\) \[0, 1, 2\]"):
        sealed.mask("a", key, 1, peers, {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0})
    alone = sealed.mask("a", key, 1, peers, {3: 1.0})  # a cohort of one: no masks at all
    np.testing.assert_allclose(decode(alone), [5.0, 5.0, 5.0])
    with pytest.raises(LookupError):  # masking consumes the update: it cannot be sent twice
        sealed.mask("a", key, 2, peers, {3: 1.0})
    sealed.mask("a", key, 3, peers, {10: 1.0})  # older tasks not asked for are gone for good
    with pytest.raises(LookupError, match=r"\[5\]"):
        sealed.mask("a", key, 4, peers, {5: 1.0})
    np.testing.assert_allclose(decode(sealed.mask("a", key, 5, peers, {11: 0.5})), [2.5, 2.5, 5.0])


def test_a_member_killed_after_its_update_arrived_is_recovered_on_ray(ray_session):
    """The driver's side end to end on real actors: receipts, one member dies before
    masking, survivors reveal its masks, and the decoded mean equals FedAvg over the
    survivors' plain updates with the same staleness weights."""
    cfg = load_config(digits_config(privacy={"secure_aggregation": True}))
    specs = [spec for spec, _ in participant_specs(cfg, "run")]
    hooks = PrivacyHooks(cfg.privacy, cfg)
    actor = hooks.actor_class(Participant)
    handles = {s.name: actor.options(num_cpus=0.5).remote(s) for s in specs}
    first = handles[specs[0].name]
    layout = ray.get(first.describe.remote())["layout"]
    state = GlobalState(0, ray.get(first.initial_parameters.remote()), layout)
    weights = [1.0, 0.5, 1.0, 0.25]

    def train(i: int, spec, secure: bool):
        return handles[spec.name].train.remote(state, Instructions(task_id=i, seed=i, seal=secure))

    receipts = ray.get([train(i, s, True) for i, s in enumerate(specs)])
    assert all(r.payload.size == 0 and r.metrics["sealed"] == 1.0 for r in receipts)
    for r, w in zip(receipts, weights):
        r.weight = w
    victim = specs[2].name
    ray.kill(handles[victim], no_restart=True)
    members = {s.name: Member(s.name, s.group, i, handles[s.name], s, 0) for i, s in enumerate(specs)}
    combined, dropped = hooks.combine(receipts, layout, members)
    assert dropped == [victim]
    survivors = [i for i, s in enumerate(specs) if s.name != victim]
    plain = ray.get([train(i, specs[i], False) for i in survivors])  # same seeds, same state
    for u, i in zip(plain, survivors):
        u.weight = weights[i]
    zeros = np.zeros(layout.size, np.float32)
    expected = FedAvg().aggregate(zeros, plain)
    got = FedAvg().aggregate(zeros, combined)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-5
    assert combined[0].num_examples == sum(u.num_examples for u in plain)
    for h in handles.values():
        ray.kill(h)


def _secure_run(secure: bool, **overrides):
    raw = digits_config(**({"stop": {"max_aggregations": 3}, "schedule": {"max_failures": 10}} | overrides),
                        privacy={"secure_aggregation": secure})
    orch = Orchestrator(load_config(raw))
    return orch, orch.run()


@pytest.mark.parametrize("hosting", [
    {"hosting": "dedicated"},
    # one worker that keeps one participant set up: each is evicted and set up again between
    # tasks, so its key must come back from its state directory and a sealed update must pin it
    {"hosting": "pool", "workers": 1, "cache_size": 1},
])
def test_secure_sync_run_matches_the_plain_run_even_with_a_dropout(ray_session, hosting):
    groups = [{"name": "site", "count": 3, "model": {"name": "mlp", "hidden": [16]},
               "train": {"local_steps": 3, "lr": 0.1}, "resources": {"num_cpus": 0.5}, **hosting}]
    groups.append({**groups[0], "name": "flaky", "count": 1, "system": {"dropout_prob": 1.0}})
    # the plain reference is pooled whatever the hosting under test: pooled and dedicated
    # hosting give the same model (test_pool), and a pool's warm workers start nothing
    plain, _ = _secure_run(False, groups=[{k: v for k, v in g.items() if k not in ("workers", "cache_size")}
                                          | {"hosting": "pool"} for g in groups])
    secure, history = _secure_run(True, groups=groups)
    assert (history.event == "dropout").sum() == 3
    assert (history.event == "aggregation").sum() == 3
    updates = history[history.event == "update"]
    assert len(updates) == 9 and (updates.bytes == 0).all()  # receipts only: no plaintext reached the driver
    assert secure.summary["secure_aggregation"] is True
    np.testing.assert_allclose(secure.params, plain.params, rtol=0, atol=1e-5)


def _cohorts(history) -> list[set[str]]:
    """The participants whose updates went into each aggregation, in order."""
    out, current = [], set()
    for row in history.itertuples():
        if row.event == "update":
            current.add(row.participant)
        elif row.event in ("aggregation", "aggregation_aborted"):
            out.append(current)
            current = set()
    return out


def test_secure_fedbuff_waits_until_a_buffer_mixes_enough_participants(ray_session):
    """One fast participant could fill a buffer of 2 alone; its sum would be its own
    update, so the driver keeps buffering until a second participant's update lands."""
    base = {"model": {"name": "mlp", "hidden": [16]}, "train": {"local_steps": 5, "lr": 0.1},
            "resources": {"num_cpus": 0.5}, "hosting": "pool"}
    groups = [{**base, "name": "fast", "count": 1, "system": {"simulated_seconds_per_sample": 0.0001}},
              {**base, "name": "slow", "count": 2, "system": {"simulated_seconds_per_sample": 0.02}}]
    _, history = _secure_run(True, groups=groups, stop={"max_aggregations": 4}, clock="simulated",
                             schedule={"mode": "buffered", "buffer_size": 2, "concurrency": 3})
    cohorts = _cohorts(history)
    assert (history.event == "aggregation").sum() == 4
    assert "aggregation_aborted" not in set(history.event)
    assert all(len(c) >= 2 for c in cohorts), cohorts
    sizes = history[history.event == "aggregation"].detail.str.extract(r"^(\d+) updates")[0].astype(int)
    assert sizes.max() > 2  # the fast one's extra updates waited in the buffer
    accuracy = history[history.event == "evaluation"].accuracy
    assert accuracy.iloc[-1] > accuracy.iloc[0] + 0.15  # masks that did not cancel give noise


def test_secure_sync_round_of_one_is_aborted_not_decoded(ray_session):
    base = {"model": {"name": "mlp", "hidden": [16]}, "train": {"local_steps": 2}, "resources": {"num_cpus": 0.5},
            "hosting": "pool"}
    groups = [{**base, "name": "site", "count": 1},
              {**base, "name": "flaky", "count": 1, "system": {"dropout_prob": 1.0}}]
    orch, history = _secure_run(True, groups=groups, stop={"max_updates": 3})
    aborted = history[history.event == "aggregation_aborted"]
    assert len(aborted) >= 2 and (history.event == "aggregation").sum() == 0  # the 3rd update stops the run
    assert aborted.detail.str.contains("fewer than privacy.min_cohort=2").all()
    np.testing.assert_array_equal(orch.params, orch.global_model.params)  # the model never moved


def test_secure_fedbuff_survives_participants_killed_mid_run(ray_session):
    """Real crashes (restarted actors lose their sealed updates and keys) during a secure
    FedBuff run: the run reaches its aggregations, no update is counted twice, and the
    model keeps learning (one undecodable sum would wreck it)."""
    from conftest import run_while

    base = {"model": {"name": "mlp", "hidden": [16]}, "train": {"local_steps": 5, "lr": 0.1},
            "resources": {"num_cpus": 0.5, "max_restarts": -1},
            "system": {"simulated_seconds_per_sample": 0.001}}
    raw = digits_config(groups=[{**base, "name": "site", "count": 4}], stop={"max_aggregations": 12},
                        schedule={"mode": "buffered", "buffer_size": 3, "max_failures": 30},
                        privacy={"secure_aggregation": True})
    orch = Orchestrator(load_config(raw))
    killed: list[str] = []
    next_kill = 2

    def chaos() -> bool:
        nonlocal next_kill
        if getattr(orch, "version", 0) >= next_kill and len(killed) < 3:
            victim = sorted(orch.members)[len(killed)]
            ray.kill(orch.members[victim].handle, no_restart=False)
            killed.append(victim)
            next_kill += 3
        return False

    history = run_while(orch, chaos)
    assert len(killed) == 3
    assert (history.event == "aggregation").sum() == 12
    updates = history[history.event == "update"]
    assert updates.task_id.is_unique
    assert np.isfinite(orch.params).all()
    accuracy = history[history.event == "evaluation"].accuracy
    assert accuracy.iloc[-1] > accuracy.iloc[0] + 0.25, accuracy.tolist()  # garbage sums give ~0.1
    # a sum is only ever skipped because too few members were left to hide each other
    assert history[history.event == "aggregation_aborted"].detail.str.contains("min_cohort=2").all()


def test_a_resumed_driver_never_repeats_a_cohort_id():
    """Participants keep their masking keys across a resume, and the cohort id salts the
    pairwise masks: a repeated id would repeat masks, and two vectors masked alike reveal
    the difference of their plaintexts. Two driver starts (a run and its resume from the
    same checkpoint) must draw different ids."""
    config = load_config(digits_config(privacy={"secure_aggregation": True}))
    first, resumed = PrivacyHooks(config.privacy, config), PrivacyHooks(config.privacy, config)
    resumed.load_state_dict(first.state_dict())
    ids = [next(first.cohort_ids) for _ in range(3)], [next(resumed.cohort_ids) for _ in range(3)]
    assert not set(ids[0]) & set(ids[1])
    assert all(0 < i < 2**63 for i in ids[0] + ids[1])  # (the 8-byte signed salt)

"""Secure aggregation: exact mask cancellation, masked vectors that reveal nothing,
recovery when a participant drops after the cohort is fixed, and real runs on Ray."""

from __future__ import annotations

import numpy as np
from conftest import digits_config

from actors.secure_aggregation import SECAGG_OPTION, MaskingKey, protect
from orchestrator.config import load_config
from orchestrator.run import Orchestrator
from strategies.secure_aggregation import decode, encode, unmask_sum
from strategies.types import Instructions

NAMES = ["a", "b", "c", "d"]


def _cohort(size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    keys = {n: MaskingKey.generate() for n in NAMES}
    peers = {n: k.public_bytes for n, k in keys.items()}
    updates = {n: rng.normal(0, 0.05, size).astype(np.float32) for n in NAMES}
    counts = {n: int(c) for n, c in zip(NAMES, rng.integers(10, 500, len(NAMES)))}
    ins = Instructions(task_id=0, version=0, seed=0, options={SECAGG_OPTION: {"cohort_id": 3, "peers": peers}})
    masked = {n: protect(updates[n], counts[n], ins, n, keys[n]) for n in NAMES}
    return keys, peers, updates, counts, masked


def test_encoding_round_trips_within_fixed_point_precision():
    x = np.array([-3.5, 0.0, 1e-6, 12345.678], np.float64)
    np.testing.assert_allclose(decode(encode(x)), x, atol=2**-24)
    assert np.allclose(decode(encode(x) + encode(-x)), 0)


def test_masks_cancel_and_the_sum_matches_the_plain_sum():
    size = 5000
    _, _, updates, counts, masked = _cohort(size)
    total = unmask_sum(list(masked.values()))
    plain = sum(counts[n] * updates[n].astype(np.float64) for n in NAMES)
    assert total[-1] == sum(counts.values())
    rel = np.linalg.norm(total[:size] - plain) / np.linalg.norm(plain)
    assert rel < 1e-5


def test_each_masked_vector_is_uncorrelated_with_its_update():
    size = 20000
    _, _, updates, counts, masked = _cohort(size, seed=1)
    for n in NAMES:
        seen = masked[n][:size].astype(np.float64)  # what the driver holds
        corr = np.corrcoef(seen, updates[n])[0, 1]
        assert abs(corr) < 0.05, (n, corr)
        # and its bits look uniform: the high bit is set about half the time
        assert 0.45 < float(np.mean(masked[n] >> np.uint64(63))) < 0.55


def test_a_participant_dropping_after_masking_is_recovered_by_the_survivors():
    size = 3000
    keys, peers, updates, counts, masked = _cohort(size, seed=2)
    dropped = ["c"]
    survivors = [n for n in NAMES if n not in dropped]
    broken = unmask_sum([masked[n] for n in survivors])
    plain = sum(counts[n] * updates[n].astype(np.float64) for n in survivors)
    assert np.linalg.norm(broken[:size] - plain) > 1e3 * np.linalg.norm(plain)  # masks left over
    recovered = [keys[n].masks_with(n, dropped, peers, 3, size + 1) for n in survivors]
    total = unmask_sum([masked[n] for n in survivors], recovered)
    assert np.linalg.norm(total[:size] - plain) / np.linalg.norm(plain) < 1e-5


def _run(ray_session, secure: bool, dropout: bool):
    groups = [{"name": "site", "count": 3, "model": {"name": "mlp", "hidden": [16]},
               "train": {"local_steps": 3, "lr": 0.1}, "resources": {"num_cpus": 0.5}}]
    if dropout:
        groups.append({**groups[0], "name": "flaky", "count": 1, "system": {"dropout_prob": 1.0}})
    raw = digits_config(groups=groups, stop={"max_aggregations": 3},
                        schedule={"max_failures": 10}, privacy={"secure_aggregation": secure})
    orch = Orchestrator(load_config(raw))
    return orch, orch.run()


def test_secure_run_matches_the_plain_run_even_with_a_dropout(ray_session):
    plain, _ = _run(ray_session, secure=False, dropout=True)
    secure, history = _run(ray_session, secure=True, dropout=True)
    assert (history.event == "dropout").sum() == 3  # the flaky one dropped after the cohort was fixed
    assert (history.event == "aggregation").sum() == 3
    assert secure.summary["secure_aggregation"] is True
    np.testing.assert_allclose(secure.params, plain.params, rtol=0, atol=1e-5)

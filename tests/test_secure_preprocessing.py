"""Federated preprocessing under secure aggregation, in-process: real participants read
their own tables and mask their statistics with their own keys; the driver's fit sees
only the decoded sums (what ``orchestrator/server/preprocessing.py`` does over Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from actors.participant.participant import Participant
from orchestrator.cluster.specs import participant_specs
from orchestrator.config import load_config
from orchestrator.server.preprocessing import fit_statistics
from strategies.secure_aggregation import unmask_sum


def _clinics(tmp_path, sites: int = 4, rows: int = 60) -> list[Participant]:
    """Sites whose ``calibrated`` column is ``4000 +- 0.01`` beside an ordinary one."""
    rng = np.random.default_rng(3)
    for i in range(sites):
        pd.DataFrame({"calibrated": 4000.0 + rng.normal(0.0, 0.01, rows), "age": rng.normal(50, 12, rows),
                      "label": rng.integers(0, 2, rows)}).to_csv(tmp_path / f"site_{i}.csv", index=False)
    config = load_config({
        "preprocess": {"standardize": True}, "privacy": {"secure_aggregation": True},
        "groups": [{"name": "site", "count": sites, "data": {
            "source": "file", "path": str(tmp_path / "site_{index}.csv"), "num_classes": 2}}],
        "evaluation": {"path": str(tmp_path / "site_0.csv")},
    })
    return [Participant(spec) for spec, _ in participant_specs(config, "secure-fit")]


def test_a_narrow_column_keeps_its_std_under_secure_aggregation(tmp_path):
    """``4000 +- 0.01``: fixed point scaled by the magnitude alone gave std 1.0 (every
    squared deviation under the masks' 2**-24 step); the deviation rounds' own scale keeps it."""
    sites = _clinics(tmp_path)
    peers = {p.spec.name: p.public_key() for p in sites}
    rounds = []

    def masked_total(scales, means, size):
        cohort = len(rounds)
        rounds.append(cohort)
        masked = [p.masked_table_statistics(["calibrated", "age"], scales, means, cohort, peers) for p in sites]
        assert all(m.dtype == np.uint64 and m.size == size for m in masked)
        return unmask_sum(masked)

    def plain_total(scales, means, size):
        return np.sum([p.table_statistics(["calibrated", "age"], scales, means) for p in sites], axis=0)

    means, stds = fit_statistics(masked_total, ["calibrated", "age"])
    plain_means, plain_stds = fit_statistics(plain_total, ["calibrated", "age"])
    pooled = pd.concat([pd.read_csv(tmp_path / f"site_{i}.csv") for i in range(4)])
    assert stds[0] == pytest.approx(pooled.calibrated.std(ddof=0), rel=1e-3)
    assert stds[0] == pytest.approx(0.01, rel=0.15)
    assert plain_stds[0] == pytest.approx(pooled.calibrated.std(ddof=0), rel=1e-9)
    assert means[0] == pytest.approx(pooled.calibrated.mean(), abs=1e-5)
    assert stds[1] == pytest.approx(pooled.age.std(ddof=0), rel=1e-6)  # an ordinary column as before
    # magnitudes, sums, deviations (all zero for 'calibrated'), 2**12 finer (still coarse), finer again
    assert len(rounds) == 5


def test_a_constant_column_keeps_std_one():
    """Zero spread at any scale is a constant column: std 1, so it standardizes to zero."""
    x = np.full((30, 1), 4000.0)

    def total(scales, means, size):
        from actors.data.preprocess import magnitudes, squared_deviations, sums

        if scales is None:
            return magnitudes(x)
        xs = x * np.asarray(scales)
        return sums(xs) if means is None else squared_deviations(xs, np.asarray(means))

    means, stds = fit_statistics(total, ["c"])
    assert means[0] == 4000.0 and stds[0] == 1.0

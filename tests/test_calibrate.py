"""``fedray profile --calibration``: candidate allocations parsed, then measured on Ray into
a calibration file the simulated clock can read back."""

from __future__ import annotations

import pytest
from conftest import digits_config

from orchestrator.cluster.calibration import Calibration
from orchestrator.config import ConfigError, load_config
from orchestrator.tools.calibrate import calibrate, parse_allocations


def _two_groups() -> dict:
    site = digits_config()["groups"][0]
    return digits_config(groups=[{**site, "name": "big", "count": 2, "resources": {"num_cpus": 2}},
                                 {**site, "name": "small", "count": 2, "resources": {"num_cpus": 0.5}}])


def test_allocations_apply_to_every_group_or_one_and_keep_each_groups_own():
    config = load_config(_two_groups())
    assert parse_allocations(["1,0.25"], config) == {"big": [0.25, 1.0, 2.0], "small": [0.25, 0.5, 1.0]}
    assert parse_allocations(["small=1"], config) == {"big": [2.0], "small": [0.5, 1.0]}
    with pytest.raises(ConfigError, match="no group named 'clinic'"):
        parse_allocations(["clinic=1"], config)
    with pytest.raises(ConfigError, match="CPU counts > 0"):
        parse_allocations(["0"], config)


def test_the_fit_separates_fixed_cost_and_never_prices_a_sample_at_zero():
    from orchestrator.tools.calibrate import fit_cost

    assert fit_cost((1.1, 10), (2.0, 100)) == pytest.approx((1.0, 0.01))
    assert fit_cost((2.5, 10), (2.0, 100)) == (0.0, 0.02)  # the small task met a busy core


def test_calibration_measures_each_group_at_each_allocation_and_round_trips(ray_session, tmp_path):
    config = load_config(_two_groups())
    calibration = calibrate(config, parse_allocations(["small=1"], config))
    calibration.save(tmp_path / "cal.json")

    loaded = Calibration.load(tmp_path / "cal.json")
    assert loaded.rows == calibration.rows
    assert {(r.group, r.num_cpus) for r in loaded.rows} == {("big", 2.0), ("small", 0.5), ("small", 1.0)}
    for row in loaded.rows:
        assert row.seconds_per_sample > 0 and row.peak_memory_bytes > 100 * 2**20 and row.samples_measured > 0
    # 0.5 and 1 CPU both train on one torch thread: one measurement serves both
    small = [r for r in loaded.rows if r.group == "small"]
    assert small[0].seconds_per_sample == small[1].seconds_per_sample
    assert loaded.task_seconds("big", 2, 0, samples=100) > loaded.task_seconds("big", 2, 0, samples=10)

"""``fedray profile --calibration``: candidate allocations parsed, then measured on Ray into
a calibration file the simulated clock can read back."""

from __future__ import annotations

import pandas as pd
import pytest
import ray
from conftest import digits_config

from orchestrator.cluster.calibration import Calibration
from orchestrator.config import ConfigError, load_config
from orchestrator.tools.calibrate import parse_allocations


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


def test_the_cpus_a_search_tries_are_what_gets_calibrated():
    from orchestrator.config import TuneSearch
    from orchestrator.tools.calibrate import allocations_searched

    search = TuneSearch(space={"groups.small.resources.num_cpus": {"grid": [1, 0.25]},
                               "groups.big.resources.num_cpus": {"uniform": [1, 4]},
                               "groups.big.train.local_epochs": {"grid": [1, 2]}})
    assert allocations_searched(load_config(_two_groups()), search) == {"big": [1.0, 2.0, 4.0],
                                                                        "small": [0.25, 0.5, 1.0]}


def test_tune_with_a_calibration_not_written_yet_measures_it_first_then_searches(ray_session, tmp_path, capsys):
    """``fedray tune --calibration NEW.json`` measures each group at the CPUs the search
    tries (``fedray profile --calibration``'s work), writes the file, then searches on it."""
    import yaml

    from orchestrator.tools.cli import main

    (tmp_path / "run.yaml").write_text(yaml.safe_dump(_two_groups()))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({
        "space": {"groups.small.resources.num_cpus": {"grid": [0.5, 1]}},
        "target_accuracy": 0.99, "budget_s": 100, "max_aggregations": 2}))
    path = tmp_path / "cal.json"
    assert main(["tune", str(tmp_path / "run.yaml"), "--search", str(tmp_path / "search.yaml"),
                 "--calibration", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "does not exist yet: calibrating first" in capsys.readouterr().out

    loaded = Calibration.load(path)
    assert {(r.group, r.num_cpus) for r in loaded.rows} == {("big", 2.0), ("small", 0.5), ("small", 1.0)}
    for row in loaded.rows:
        assert row.seconds_per_sample > 0 and row.peak_memory_bytes > 100 * 2**20 and row.samples_measured > 0
    # 0.5 and 1 CPU both train on one torch thread: one measurement serves both
    small = [r for r in loaded.rows if r.group == "small"]
    assert small[0].seconds_per_sample == small[1].seconds_per_sample
    assert loaded.task_seconds("big", 2, 0, samples=100) > loaded.task_seconds("big", 2, 0, samples=10)
    # the probe ran its rounds on Ray: a driver that aggregates and evaluates takes some time
    assert loaded.overheads.rounds_measured >= 3
    assert 0 < loaded.overheads.aggregation_seconds < 1 and 0 < loaded.overheads.evaluation_seconds < 1
    assert 0 <= loaded.overheads.task_seconds < 1
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert sorted(trials["groups.small.resources.num_cpus"]) == [0.5, 1.0] and trials.cpu_seconds.notna().all()
    assert ray.is_initialized()  # the session's Ray, not one the command started and stopped


def _rounds(start: float, compute: float, versions: int) -> list[dict]:
    """A sync history: per round, a then b dispatched, their updates after ``compute`` / 2
    and ``compute`` s, the aggregation 0.1 s later, the evaluation 0.1 s after that, the
    next dispatch 0.3 s on."""
    rows, t = [], start
    for v in range(versions):
        rows += [{"event": "dispatch", "base_version": v, "time": t, "participant": p} for p in "ab"]
        rows += [{"event": "update", "base_version": v, "time": t + compute / 2, "participant": "a", "group": "site"},
                 {"event": "update", "base_version": v, "time": t + compute, "participant": "b", "group": "site"}]
        rows += [{"event": "aggregation", "version": v + 1, "time": t + compute + 0.1},
                 {"event": "evaluation", "version": v + 1, "time": t + compute + 0.2}]
        t += compute + 0.5
    return rows


def test_overheads_are_read_from_the_rounds_between_warm_up_and_the_last():
    from orchestrator.cluster.capacity import Capacity
    from orchestrator.tools.calibrate import overheads_of

    warm_up = _rounds(0.0, compute=5.0, versions=1)  # the first round pays for imports: not counted
    history = pd.DataFrame(warm_up + _rounds(5.5, compute=0.5, versions=4))
    history.loc[history.index >= len(warm_up), ["base_version", "version"]] += 1  # rounds 1-4
    one_core, two = Capacity.parse("1 x {CPU: 1}"), Capacity.parse("1 x {CPU: 2}")
    overheads = overheads_of(history, lambda update: 0.2, lambda update: {"CPU": 1}, one_core)
    # on one core the two 0.2 s tasks run in turn: 2 x (0.2 + 0.05) = the 0.5 s the round took
    assert overheads.task_seconds == pytest.approx(0.05)
    assert overheads.evaluation_seconds == pytest.approx(0.1)
    assert overheads.aggregation_seconds == pytest.approx(0.1 + 0.3)  # update -> aggregation, evaluation -> dispatch
    assert overheads.rounds_measured == 3  # rounds 1-3: round 0 warms up, round 4 has no next dispatch
    # on two cores side by side: 0.2 + 0.3; tasks holding both cores run in turn again
    assert overheads_of(history, lambda u: 0.2, lambda u: {"CPU": 1}, two).task_seconds == pytest.approx(0.3)
    assert overheads_of(history, lambda u: 0.2, lambda u: {"CPU": 2}, two).task_seconds == pytest.approx(0.05)
    assert overheads_of(history, lambda u: 0.3, lambda u: {"CPU": 1}, one_core).task_seconds == 0.0  # no time left
    with pytest.raises(RuntimeError, match="no complete round"):
        overheads_of(history[history.base_version.fillna(9) <= 1], lambda u: 0.2, lambda u: {"CPU": 1}, one_core)


def test_a_calibration_with_nowhere_to_go_is_refused_before_measuring(tmp_path, capsys):
    import yaml

    from orchestrator.tools.cli import main

    (tmp_path / "run.yaml").write_text(yaml.safe_dump(_two_groups()))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({"space": {"groups.small.resources.num_cpus": {"grid": [1]}}}))
    missing = tmp_path / "nowhere" / "cal.json"
    assert main(["tune", str(tmp_path / "run.yaml"), "--search", str(tmp_path / "search.yaml"),
                 "--calibration", str(missing)]) == 2
    assert f"there is no directory {missing.parent}" in capsys.readouterr().err


def test_release_names_an_address_nobody_answers_on(capsys):
    from orchestrator.tools.cli import main

    assert main(["release", "--address", "127.0.0.1:1"]) == 1
    assert "no Ray cluster at 127.0.0.1:1" in capsys.readouterr().err

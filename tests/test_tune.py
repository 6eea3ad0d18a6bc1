"""``fedray tune``: search parsing and scoring without Ray, then a real two-trial search."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import digits_config

from orchestrator.config import ConfigError, TuneSearch, load_config
from orchestrator.tools.cli import main
from orchestrator.tools.trials import BudgetSpent, TrialClock, score
from orchestrator.tools.tune import (
    check_search,
    concurrent_trials,
    load_search,
    margin_line,
    run_search,
    trial_config,
)


def _search(**overrides) -> TuneSearch:
    raw = {"space": {"groups.site.train.local_epochs": {"grid": [1, 2]}},
           "target_accuracy": 0.5, "budget_s": 30}
    return TuneSearch.model_validate({**raw, **overrides})


def test_trial_config_writes_values_by_group_name_and_sets_the_stop_rule():
    base = load_config(digits_config())
    search = _search(max_aggregations=7)
    config = trial_config(base, search, {"groups.site.train.local_epochs": 3,
                                         "groups.site.resources.num_cpus": 0.25})
    assert config.groups[0].train.local_epochs == 3
    assert config.groups[0].resources.num_cpus == 0.25
    assert config.stop.target_accuracy == 0.5
    assert config.stop.max_aggregations == 7


def test_a_bad_value_anywhere_in_the_grid_fails_before_any_trial_runs(tmp_path):
    search = _search(space={"groups.site.train.local_epochs": {"grid": [1, 2]},
                            "schedule.mode": {"grid": ["sync", "fast"]}})
    with pytest.raises(ConfigError, match=r"schedule.mode: .*got 'fast'"):
        run_search(load_config(digits_config()), search, tmp_path)
    assert not (tmp_path / "runs").exists()


def test_a_searched_schedule_mode_drops_the_other_modes_settings():
    base = load_config(digits_config(schedule={"mode": "sync", "deadline_s": 2.0, "max_failures": 5}))
    search = _search(space={"schedule.mode": {"grid": ["sync", "buffered"]}})
    buffered = trial_config(base, search, {"schedule.mode": "buffered"}).schedule
    assert buffered.mode == "buffered" and buffered.max_failures == 5 and not hasattr(buffered, "deadline_s")
    assert trial_config(base, search, {"schedule.mode": "sync"}).schedule.deadline_s == 2.0


@pytest.mark.parametrize("path, named", [
    ("groups.clinic.train.local_epochs", "no group named 'clinic'"),
    ("groups.site.train.local_epoch", "'local_epoch' is not a setting"),
    ("schedul.concurrency", "'schedul' is not in the run config"),
])
def test_a_wrong_path_is_named_in_the_error(path, named):
    base = load_config(digits_config())
    with pytest.raises(ConfigError, match=named):
        trial_config(base, _search(), {path: 1})


def test_an_invalid_value_is_a_config_error_naming_the_field():
    base = load_config(digits_config())
    with pytest.raises(ConfigError, match="batch_size"):
        trial_config(base, _search(), {"groups.site.train.batch_size": 0})


def test_search_file_errors_name_the_field(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"space": {"a.b": {"grid": [1], "choice": [2]}}}))
    with pytest.raises(ConfigError, match="space.a.b"):
        load_search(path)
    path.write_text(yaml.safe_dump({"space": {"a.b": {"grid": [1]}}, "budget": 3}))
    with pytest.raises(ConfigError, match="budget: unknown field"):
        load_search(path)


def test_score_counts_from_the_first_dispatch_and_ranks_misses_last():
    history = pd.DataFrame([
        {"time": 0.0, "event": "evaluation", "accuracy": 0.1},
        {"time": 40.0, "event": "dispatch", "accuracy": None},  # 40 s of start-up
        {"time": 45.0, "event": "evaluation", "accuracy": 0.4},
        {"time": 52.0, "event": "evaluation", "accuracy": 0.6},
    ])
    hit = score(history, _search())
    assert hit["reached"] and hit["time_to_target"] == pytest.approx(12.0)
    assert hit["startup_seconds"] == 40.0
    miss = score(history, _search(target_accuracy=0.9))
    assert not miss["reached"]
    assert miss["objective"] > 30  # after any trial that reached the target within 30 s
    assert score(history, _search(objective="accuracy_at_budget", budget_s=8))["objective"] == 0.4


def test_score_follows_the_runs_metric_and_its_direction():
    """A regression run on mse: the target is reached at or below it, the miss ranks by
    the lowest mse, and at budget the objective is maximised as minus the mse."""
    history = pd.DataFrame([
        {"time": 0.0, "event": "dispatch"},
        {"time": 5.0, "event": "evaluation", "metric": "mse", "mse": 9.0},
        {"time": 9.0, "event": "evaluation", "metric": "mse", "mse": 4.0},
    ])
    hit = score(history, _search(target=5.0))
    assert hit["reached"] and hit["time_to_target"] == 9.0 and hit["best_mse"] == 4.0
    misses = [score(history, _search(target=1.0)), score(history.iloc[:2], _search(target=1.0))]
    assert 30 < misses[0]["objective"] < misses[1]["objective"]  # mse 4 ranks before mse 9
    assert score(history, _search(objective="metric_at_budget"))["objective"] == -4.0
    base = load_config({"task": "regression", "dataset": {"name": "table", "path": "t.csv"},
                        "groups": [{"name": "site"}]})
    with pytest.raises(ConfigError, match="task.metric is 'r2': give the search a target"):
        trial_config(base, _search(), {"groups.site.train.local_epochs": 1})
    assert trial_config(base, _search(target=0.8), {"groups.site.train.local_epochs": 1}).target == ("r2", 0.8)


def test_trial_clock_ends_a_trial_once_its_budget_is_spent():
    clock = TrialClock(budget_s=5)
    clock.on_event({"time": 50.0, "event": "evaluation"})  # start-up does not count
    clock.on_event({"time": 60.0, "event": "dispatch"})
    clock.on_event({"time": 64.0, "event": "update"})
    with pytest.raises(BudgetSpent):
        clock.on_event({"time": 65.5, "event": "update"})
    assert len(clock.rows) == 4


def test_two_trial_search_writes_a_sorted_table_and_a_runnable_best_config(ray_session, tmp_path):
    """Simulated (no calibration: ``system.simulated_seconds_per_sample``), so in process;
    the table and ``best.yaml`` are written the same way for Tune's wall-clock trials."""
    base = digits_config(name="tunetest", clock="simulated")
    base["groups"][0] |= {"count": 2, "system": {"simulated_seconds_per_sample": 0.001}}
    config = load_config(base)
    search = _search(space={"groups.site.train.local_steps": {"grid": [1, 8]}},
                     target_accuracy=0.6, budget_s=20, max_aggregations=15)

    table = run_search(config, search, tmp_path)

    assert len(table) == 2
    assert list(table.objective) == sorted(table.objective)
    assert set(table["groups.site.train.local_steps"]) == {1, 8}
    saved = pd.read_csv(tmp_path / "trials.csv")
    assert list(saved.trial_id) == list(table.trial_id)
    best = load_config(tmp_path / "best.yaml")
    assert best.groups[0].train.local_steps == table.iloc[0]["groups.site.train.local_steps"]
    assert best.stop == config.stop  # the user's stop rule, not the trial's
    for run_dir in table.run_dir:
        events = pd.read_csv(f"{run_dir}/trial_events.csv")
        assert (events.event == "evaluation").any()


def test_wall_clock_trials_run_one_at_a_time_unless_the_search_says_otherwise():
    assert concurrent_trials(_search()) == 1  # a shared machine would skew seconds to target
    assert concurrent_trials(_search(max_concurrent_trials=2)) == 2


def test_simulated_trials_of_any_allocation_compute_on_the_same_warm_workers():
    """The allocation is priced, not held: what the processes of two trials ask Ray for is
    the same, so the second trial takes the first one's workers."""
    from orchestrator.tools.simulated_search import computing_only

    base = load_config(_two_sizes())
    search = _search(space={"groups.big.resources.num_cpus": {"grid": [1, 3]}})
    one, three = (computing_only(trial_config(base, search, {"groups.big.resources.num_cpus": c})) for c in (1, 3))
    assert one.model_dump() == three.model_dump()
    assert {(g.hosting, g.resources.num_cpus) for g in one.groups} == {("pool", 1.0)}


def _two_sizes(big_cpus: float = 3, hosting: str = "dedicated") -> dict:
    """Two big dedicated participants and a pool of small ones: sizes a placement group
    could mix up, so that a small worker takes the room a big actor needs."""
    site = digits_config()["groups"][0]
    return digits_config(name="two-sizes", groups=[
        {**site, "name": "big", "count": 2, "hosting": hosting, "resources": {"num_cpus": big_cpus}},
        {**site, "name": "small", "count": 4, "hosting": "pool", "workers": 2, "resources": {"num_cpus": 0.25}},
    ])


def test_a_trial_resolves_hosting_where_it_runs_and_reserves_exactly_its_processes():
    from orchestrator.cluster.capacity import Capacity
    from orchestrator.cluster.preflight import Capacity as Hosting
    from orchestrator.tools.trial_plan import plan_trial

    base = load_config(_two_sizes(hosting="auto"))
    search = _search(space={"groups.big.resources.num_cpus": {"grid": [1, 3]}}, driver_cpus=0.5)
    two_cores = Hosting(cpus=2, gpus=0, memory=16e9, cpus_fixed=False)
    plan = plan_trial(trial_config(base, search, {"groups.big.resources.num_cpus": 1}), 0.5, two_cores,
                      Capacity.parse("1 x {CPU: 4}"))
    assert plan.pruned is None
    hosting = {g.name: (g.hosting, g.pool_size) for g in plan.config.groups}
    assert hosting == {"big": ("pool", 1), "small": ("pool", 2)}  # as `fedray run` decides on 2 cores
    assert plan.bundles == [{"CPU": 0.5}, {"CPU": 1 * 1 + 2 * 0.25}]  # driver, then every process

    too_big = plan_trial(trial_config(base, search, {"groups.big.resources.num_cpus": 3}), 0.5, two_cores,
                         Capacity.parse("1 x {CPU: 3}"))
    assert too_big.pruned == ("whole-run processes hold CPU=4 (driver 1 x 0.5 + big 1 x 3 + small 2 x 0.25) "
                              "but the capacity has CPU=3 in all")
    split = plan_trial(trial_config(load_config(_two_sizes()), search, {"groups.big.resources.num_cpus": 3}), 0.5,
                       Hosting(cpus=16, gpus=0, memory=64e9), Capacity.parse("2 nodes x {CPU: 4}"))
    assert "share one placement-group bundle" in split.pruned and "CPU=6.5" in split.pruned
    refused = plan_trial(trial_config(load_config(_two_sizes()), search, {"groups.big.resources.num_cpus": 3}), 0.5,
                         Hosting(cpus=4, gpus=0, memory=64e9), Capacity.parse("1 x {CPU: 8}"))
    assert refused.pruned.startswith("2 dedicated actors of group big, 2 pool workers of group small would ask for 6.5 CPUs")


def test_a_search_mixing_big_and_small_participants_runs_and_prunes_what_cannot_fit(ray_session, tmp_path):
    """The hang of issue 22: a trial's pool workers took the bundles its big dedicated
    actors were sized for, and the run waited out its 300 s start-up timeout."""
    config = load_config(_two_sizes())
    search = _search(space={"groups.big.resources.num_cpus": {"grid": [3, 8]}},
                     target_accuracy=0.99, budget_s=20, max_aggregations=2)

    table = run_search(config, search, tmp_path)

    ran = table[table.pruned.isna()]
    assert list(ran["groups.big.resources.num_cpus"]) == [3] and ran.num_aggregations.iloc[0] == 2
    pruned = table[table.pruned.notna()]
    assert list(pruned["groups.big.resources.num_cpus"]) == [8]
    assert "would ask for 16.5 CPUs, the Ray cluster has 8" in pruned.pruned.iloc[0]


def test_simulated_trials_on_a_described_capacity_are_scored_in_calibrated_seconds(ray_session, tmp_path):
    """Two participants on a 2-CPU node: at 1 CPU each their 1 s tasks run side by side, at
    2 CPUs each their 0.6 s tasks queue (1.2 s a round), so 1 CPU wins here, by 1.2x; 3
    CPUs fit no node and never run. Asked only for the best, the search stops the 2-CPU
    trial once its clock passes the 1-CPU trial's time to the target."""
    from orchestrator.cluster.calibration import Calibration, Measurement
    from orchestrator.tools.tune import simulated

    rows = [Measurement("site", cpus, 0.0, False, 0.0, fixed, 3e8, 0, 100) for cpus, fixed in ((1.0, 1.0), (2.0, 0.6))]
    Calibration({}, rows).save(tmp_path / "cal.json")
    base = digits_config("auto", name="simtune")
    base["groups"][0]["count"] = 2
    config = simulated(load_config(base), str(tmp_path / "cal.json"), "1 x {CPU: 2}")
    search = _search(space={"groups.site.resources.num_cpus": {"grid": [1, 2, 3]}},
                     target_accuracy=0.5, budget_s=100, max_aggregations=4)

    every = search.model_copy(update={"early_stop": False})  # every trial to its end, as keep=2 would
    table = run_search(config, every, tmp_path / "out").set_index("groups.site.resources.num_cpus")

    assert list(table.index) == [1, 2, 3] and table.reached.tolist() == [True, True, False]
    rounds = table.time_to_target[1] / 1.0
    assert rounds == round(rounds) >= 1
    assert table.time_to_target[2] == pytest.approx(1.2 * rounds)
    assert "CPU=3" in table.pruned[3] and table.pruned[:2].isna().all() and table.stopped_early.isna().all()
    # the cost: 1 CPU x 1 s against 2 CPUs x 0.6 s a task, the same tasks either way
    assert table.cpu_seconds[2] == pytest.approx(1.2 * table.cpu_seconds[1]) and table.cpu_seconds[1] >= 2 * rounds
    assert table.pareto.tolist() == [True, False, False]  # 1 CPU: sooner and cheaper; 3: never ran

    cut = run_search(config, search, tmp_path / "cut").set_index("groups.site.resources.num_cpus")
    assert cut.time_to_target[1] == table.time_to_target[1]  # the same simulation, to the bit
    assert not cut.reached[2] and cut.stopped_early[2].startswith(f"at {rounds:.3g}s")
    assert cut.num_aggregations[2] < table.num_aggregations[2]
    kept = run_search(config, search, tmp_path / "kept", keep=2).set_index("groups.site.resources.num_cpus")
    assert kept.stopped_early.isna().all() and kept.time_to_target[2] == table.time_to_target[2]  # 2 best exact
    table = table.iloc[:2]

    # --confirm: the best trial and the config as given (0.5 CPUs: priced as the nearest
    # measured, 1 CPU) again on the wall clock, one at a time in this Ray session
    from orchestrator.tools.confirm import BASELINE, confirm, confirm_lines

    checked = confirm(config, search, table.reset_index(), 1, tmp_path / "out")
    assert checked.trial_id.tolist() == [BASELINE, table.trial_id.iloc[0]]
    assert checked.predicted_s.tolist() == pytest.approx([rounds, rounds])
    assert (checked.measured_s > 0).all()  # the digits tasks really reach 0.5 within 4 aggregations
    np.testing.assert_allclose(checked.error, checked.predicted_s / checked.measured_s - 1)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "confirm.csv"), checked, check_dtype=False)
    for run in ("as-given-simulated", "as-given", table.trial_id.iloc[0]):
        events = pd.read_csv(tmp_path / "out" / "confirm" / run / "trial_events.csv")
        assert (events.event == "dispatch").any()
    assert "prediction error: at most" in "\n".join(confirm_lines(checked, search))
    assert checked.oversubscribed.dtype == bool  # what each run's pre-flight said of its CPUs
    from orchestrator.records.plots import plot_tuning

    assert plot_tuning(table.reset_index(), tmp_path / "tune.png", checked).stat().st_size > 0


def test_confirm_needs_a_simulated_search_on_this_machine(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(digits_config()))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({"space": {"groups.site.train.local_epochs": {"grid": [1]}}}))
    args = ["tune", str(tmp_path / "run.yaml"), "--search", str(tmp_path / "search.yaml"), "--confirm", "1"]
    assert main(args) == 2
    assert "--confirm checks a simulated search against this machine's wall clock" in capsys.readouterr().err
    from orchestrator.cluster.calibration import Calibration, Measurement

    Calibration({}, [Measurement("site", 1.0, 0.0, False, 0.0, 1.0, 3e8, 0, 100)]).save(tmp_path / "cal.json")
    assert main([*args, "--calibration", str(tmp_path / "cal.json"), "--capacity", "4 x {CPU: 16}"]) == 2
    assert "no --capacity" in capsys.readouterr().err


def test_a_simulated_search_over_hosting_is_refused_before_any_trial(tmp_path):
    """Simulated trials all run on one-CPU pool workers and price only tasks, so a search
    over hosting or workers would give every trial the same score: refused, naming why."""
    from orchestrator.cluster.calibration import Calibration, Measurement
    from orchestrator.tools.tune import simulated

    Calibration({}, [Measurement("site", 1.0, 0.0, False, 0.0, 1.0, 3e8, 0, 100)]).save(tmp_path / "cal.json")
    config = simulated(load_config(digits_config()), str(tmp_path / "cal.json"), None)
    for path, values in (("groups.site.hosting", ["pool", "dedicated"]), ("groups.site.workers", [1, 2])):
        with pytest.raises(ConfigError, match=rf"search path {path}: simulated trials price tasks"):
            run_search(config, _search(space={path: {"grid": values}}), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # on the wall clock the same search is a real question, and passes the check
    assert len(check_search(load_config(digits_config()), _search(space={"groups.site.workers": {"grid": [1, 2]}}))) == 2


def test_cost_to_target_picks_the_cheaper_allocation_where_time_picks_the_faster(ray_session, tmp_path):
    """On a 4-CPU node two 2-CPU tasks (0.6 s each) run side by side and beat two 1-CPU
    tasks (1 s) on time, but reserve 1.2 CPU-seconds each against 1: the cost objective
    picks 1 CPU, and stops the 2-CPU trial once it has spent more than that trial paid."""
    from orchestrator.cluster.calibration import Calibration, Measurement
    from orchestrator.tools.tune import simulated

    rows = [Measurement("site", cpus, 0.0, False, 0.0, fixed, 3e8, 0, 100) for cpus, fixed in ((1.0, 1.0), (2.0, 0.6))]
    Calibration({}, rows).save(tmp_path / "cal.json")
    base = digits_config("auto", name="costtune")
    base["groups"][0]["count"] = 2
    config = simulated(load_config(base), str(tmp_path / "cal.json"), "1 x {CPU: 4}")
    space = {"groups.site.resources.num_cpus": {"grid": [1, 2]}}

    fast = run_search(config, _search(space=space, target_accuracy=0.5, budget_s=100, max_aggregations=4),
                      tmp_path / "time")
    assert fast["groups.site.resources.num_cpus"].tolist() == [2, 1]
    rounds = fast.time_to_target.iloc[0] / 0.6
    assert rounds == pytest.approx(round(rounds)) and fast.reached.all()

    cheap = run_search(config, _search(space=space, objective="cost_to_target", target_accuracy=0.5, budget_s=100,
                                       max_aggregations=4), tmp_path / "cost")
    assert cheap["groups.site.resources.num_cpus"].tolist() == [1, 2]
    assert cheap.objective.iloc[0] == pytest.approx(2 * round(rounds) * 1.0)  # 2 tasks a round, 1 CPU x 1 s each
    assert not cheap.reached.iloc[1] and cheap.stopped_early.iloc[1].startswith("once it cost more")
    assert "CPU-seconds" in margin_line(cheap, _search(space=space, objective="cost_to_target"))
    with pytest.raises(ConfigError, match="cost_to_target.*give --calibration"):
        check_search(load_config(base), _search(space=space, objective="cost_to_target"))


def test_confirm_says_which_runs_oversubscribed_the_machine(tmp_path):
    """The simulated cluster books cores as a cluster's Ray does; a wall-clock run whose
    hosting asked for more CPUs than the machine has is flagged beside its prediction."""
    from orchestrator.tools.confirm import confirm_lines, oversubscribed

    hosting = "hosting: group a -> pool of 1 worker (as set) [3 processes on this machine: ~1 GB, 3 of 2 CPUs{}]"
    for name, suffix in (("over", " (oversubscribed)"), ("fits", "")):
        (tmp_path / name).mkdir()
        pd.DataFrame({"event": ["hosting", "dispatch"], "detail": [hosting.format(suffix), None]}).to_csv(
            tmp_path / name / "history.csv", index=False)
    assert oversubscribed(tmp_path / "over") and not oversubscribed(tmp_path / "fits")
    assert not oversubscribed(tmp_path / "never-written")  # a run ended by its budget writes no history
    frame = pd.DataFrame({"trial_id": ["as given", "trial_000"], "predicted_s": [1.0, 1.0], "measured_s": [2.0, 1.1],
                          "error": [-0.5, -0.09], "oversubscribed": [True, False]})
    lines = "\n".join(confirm_lines(frame, _search()))
    assert "as given: the run asked for more CPUs than this machine has" in lines and "trial_000:" not in lines
    assert "at most 50% over 2 runs; at most 9% over the 1 that did not oversubscribe" in lines

"""Device traces: explicit availability windows, the fleet and windows tables, FedScale's
pickles, and a simulated run that replays a small traced fleet."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import digits_config

from actors.participant.participant import Participant
from actors.participant.system import (
    SimulatedDropout,
    Unavailable,
    check_online,
    initial_phase,
    online_until,
    play_out,
    windows_online_until,
)
from actors.spec.system import Availability, SystemSpec, TraceSpec, Windows
from orchestrator.cluster.members import RunError
from orchestrator.cluster.specs import participant_specs
from orchestrator.cluster.traces import TraceError, fedscale_tables, participant_systems
from orchestrator.config import ConfigError, load_config, missing_data_files

NAMES = ["phones-0", "phones-1", "phones-2"]

REPO = Path(__file__).resolve().parents[1]


# -- the window math ---------------------------------------------------------------


def test_windows_say_whether_online_and_when_that_changes():
    windows = [(10.0, 20.0), (40.0, 60.0)]
    assert windows_online_until(windows, 100.0, 0.0) == (False, 10.0)
    assert windows_online_until(windows, 100.0, 10.0) == (True, 20.0)  # start included
    assert windows_online_until(windows, 100.0, 20.0) == (False, 40.0)  # end excluded
    assert windows_online_until(windows, 100.0, 75.0) == (False, 110.0)  # next cycle's first window
    assert windows_online_until(windows, 100.0, 345.0) == (True, 360.0)  # the cycle repeats


def test_a_window_that_ends_the_cycle_runs_into_the_next_ones_first():
    assert windows_online_until([(0.0, 5.0), (80.0, 100.0)], 100.0, 90.0) == (True, 105.0)
    assert windows_online_until([(0.0, 5.0), (80.0, 100.0)], 100.0, 50.0) == (False, 80.0)
    assert windows_online_until([(0.0, 100.0)], 100.0, 250.0) == (True, math.inf)  # always online


def test_online_until_takes_windows_or_the_periodic_model_and_a_phase():
    windows = Windows(windows=[(10, 20)], period_s=100)
    assert online_until(windows, 0.0, 15.0) == (True, 20.0)
    assert online_until(windows, 5.0, 15.0) == (False, 105.0)  # shifted: at 20 in its cycle
    assert online_until(Availability(on_s=10, off_s=30, phase_s=0), 0.0, 45.0) == (True, 50.0)


def test_windows_must_be_sorted_disjoint_and_inside_the_cycle():
    for bad in ([(0, 10), (5, 20)], [(10, 5)], [(0, 120)], [(20, 30), (0, 10)]):
        with pytest.raises(ValueError, match="sorted, disjoint"):
            Windows(windows=bad, period_s=100)


def test_trace_windows_have_no_random_phase_but_periodic_availability_draws_one():
    rng = np.random.default_rng(0)
    assert initial_phase(Windows(windows=[(0, 1)], period_s=2), rng) == 0.0
    assert initial_phase(None, rng) == 0.0
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state  # nothing drawn
    assert 0 <= initial_phase(Availability(on_s=1, off_s=3), rng) < 4


def _participant(availability: Windows) -> Participant:
    """A participant that checks availability, without loading data or a model."""
    spec = participant_specs(load_config(digits_config(groups=[{"name": "phones", "count": 1}])), "t")[0][0]
    participant = Participant(spec.model_copy(update={"system": SystemSpec(availability=availability)}))
    participant._phase = 0.0
    return participant


def test_the_participant_refuses_work_offline_and_drops_a_task_that_outlasts_its_window():
    spec = _participant(Windows(windows=[(0, 10), (30, 50)], period_s=60)).spec
    check_online(spec, 0.0, 5.0)
    with pytest.raises(Unavailable) as offline:
        check_online(spec, 0.0, 12.0)  # wall or simulated, the run clock is what counts
    assert offline.value.retry_at == 30.0
    rng, never = np.random.default_rng(0), lambda seconds: pytest.fail("the simulated clock never waits")
    assert play_out(spec, 0.0, rng, 0.0, 100, 31.0, 0, 4.0, never) == 4.0  # the simulated clock
    with pytest.raises(SimulatedDropout, match="offline mid-task"):
        play_out(spec, 0.0, rng, 0.0, 100, 48.0, 0, 4.0, never)


# -- the tables --------------------------------------------------------------------


def _system(tmp_path, fleet: pd.DataFrame, windows: pd.DataFrame | None = None, suffix: str = ".csv",
            **trace) -> SystemSpec:
    def write(frame: pd.DataFrame, name: str) -> str:
        path = tmp_path / f"{name}{suffix}"
        frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
        return str(path)

    spec = {"path": write(fleet, "fleet")} | ({"windows": write(windows, "windows")} if windows is not None else {})
    return SystemSpec(simulated_seconds_per_sample=trace.pop("spp", None), trace=TraceSpec(**spec, **trace))


def test_a_csv_fleet_gives_each_participant_speed_bandwidth_and_windows(tmp_path):
    fleet = pd.DataFrame({"speed": [1.0, 0.5, 0.25, 0.1], "bandwidth_mbps": [10, 5, 1, 1]})
    windows = pd.DataFrame({"participant": [0, 1, 1, 2, 2], "start_s": [0, 0, 5, 50, 10],
                            "end_s": [100, 10, 20, 80, 30]})
    got = participant_systems(_system(tmp_path, fleet, windows, spp=0.01), "phones", NAMES)
    assert [speed for speed, _ in got] == [1.0, 0.5, 0.25]  # the 4th row is spare
    systems = [system for _, system in got]
    assert [s.bandwidth_mbps for s in systems] == [10, 5, 1]
    assert systems[1].availability == Windows(windows=[(0, 20)], period_s=100)  # merged
    assert systems[2].availability.windows == ((10, 30), (50, 80))
    assert all(s.trace is None and s.simulated_seconds_per_sample == 0.01 for s in systems)


def test_a_parquet_fleet_matches_rows_by_name_and_normalises_absolute_speeds(tmp_path):
    fleet = pd.DataFrame({"participant": ["phones-2", "phones-0", "phones-1"],
                          "speed": [0.4, 0.1, 0.2], "period_s": [50.0, 60.0, 70.0]})
    windows = pd.DataFrame({"participant": ["phones-0", "phones-1", "phones-2"],
                            "start_s": [0.0, 10.0, 20.0], "end_s": [30.0, 40.0, 50.0]})
    got = participant_systems(_system(tmp_path, fleet, windows, ".parquet", speed_unit="seconds_per_sample"),
                              "phones", NAMES)
    speeds, systems = zip(*got)
    np.testing.assert_allclose(speeds, [1.0, 0.5, 0.25])  # 0.1 s/sample is the fastest
    assert {s.simulated_seconds_per_sample for s in systems} == {0.1}  # ... and sets the pace
    assert [s.availability.period_s for s in systems] == [60.0, 70.0, 50.0]
    # samples/s, and a group that sets its own pace keeps the trace's spread only
    rates = pd.DataFrame({"speed": [20.0, 10.0, 5.0]})
    got = participant_systems(_system(tmp_path, rates, speed_unit="samples_per_s", spp=0.5), "phones", NAMES)
    assert [s for s, _ in got] == [1.0, 0.5, 0.25] and got[0][1].simulated_seconds_per_sample == 0.5
    assert got[0][1].availability is None  # no windows table: the group's availability


def test_windows_repeat_with_trace_period_or_the_latest_end(tmp_path):
    fleet = pd.DataFrame({"speed": [1.0, 1.0, 1.0]})
    windows = pd.DataFrame({"participant": [0, 1, 2], "start_s": [0, 10, 0], "end_s": [5, 40, 1]})
    latest = participant_systems(_system(tmp_path, fleet, windows), "phones", NAMES)
    assert {s.availability.period_s for _, s in latest} == {40.0}
    explicit = participant_systems(_system(tmp_path, fleet, windows, period_s=100.0), "phones", NAMES)
    assert {s.availability.period_s for _, s in explicit} == {100.0}


# -- errors that name the group, the file and the column --------------------------------


def _error(tmp_path, fleet, windows=None, **trace) -> str:
    with pytest.raises(TraceError) as exc:
        participant_systems(_system(tmp_path, fleet, windows, **trace), "phones", NAMES)
    return str(exc.value)


def test_a_missing_trace_file_names_the_group_and_the_path(tmp_path):
    system = SystemSpec(trace=TraceSpec(path=str(tmp_path / "nope.csv")))
    with pytest.raises(TraceError, match=r"group phones: trace .*nope.csv: file not found"):
        participant_systems(system, "phones", NAMES)
    config = load_config(digits_config(groups=[{"name": "phones", "count": 3, "system": system.model_dump()}]))
    with pytest.raises(RunError, match="group phones.*nope.csv"):  # what `fedray run` prints
        participant_specs(config, "t")


def test_too_few_rows_or_unknown_names_are_refused(tmp_path):
    assert "2 rows for the group's 3 participants" in _error(tmp_path, pd.DataFrame({"speed": [1, 1]}))
    named = pd.DataFrame({"participant": ["phones-0", "phones-1", "tablet-0"], "speed": [1, 1, 1]})
    assert "'tablet-0' name no participant" in _error(tmp_path, named)
    some = pd.DataFrame({"participant": [0, 2], "speed": [1, 1]})
    assert "no row for participant(s) phones-1" in _error(tmp_path, some)
    twice = pd.DataFrame({"participant": [0, 1, 2, 1], "speed": [1, 1, 1, 1]})
    assert "more than one row for phones-1" in _error(tmp_path, twice)


def test_bad_columns_are_named(tmp_path):
    assert "unknown column(s) bandwith_mbps" in _error(tmp_path, pd.DataFrame({"speed": [1] * 3, "bandwith_mbps": [1] * 3}))
    assert "column 'speed' is missing" in _error(tmp_path, pd.DataFrame({"bandwidth_mbps": [1] * 3}))
    assert "column speed: row 1 has 'fast'" in _error(tmp_path, pd.DataFrame({"speed": [1, "fast", 1]}))
    assert "column speed: row 2 has 1.5; relative speeds are in (0, 1]" in _error(
        tmp_path, pd.DataFrame({"speed": [1, 1, 1.5]}))
    assert "column bandwidth_mbps: row 0" in _error(tmp_path, pd.DataFrame({"speed": [1] * 3, "bandwidth_mbps": [0, 1, 1]}))
    fleet = pd.DataFrame({"speed": [1] * 3})
    windows = pd.DataFrame({"participant": [0, 1, 2], "start_s": [0, 5, 0], "end_s": [1, 5, 1]})
    assert "trace windows" in _error(tmp_path, fleet, windows) and "start_s=5 is not before end_s=5" in _error(
        tmp_path, fleet, windows)
    assert "participant phones-2 has no online window" in _error(
        tmp_path, fleet, pd.DataFrame({"participant": [0, 1], "start_s": [0, 0], "end_s": [1, 1]}))
    assert "ending at 20 s, after its period_s=10" in _error(
        tmp_path, fleet, pd.DataFrame({"participant": [0, 1, 2], "start_s": [0, 0, 0], "end_s": [1, 20, 1]}),
        period_s=10.0)
    assert "column 'end_s' is missing" in _error(tmp_path, fleet, pd.DataFrame({"participant": [0], "start_s": [0]}))


def test_the_config_refuses_a_trace_beside_what_it_replaces():
    def system(**fields):
        return digits_config(groups=[{"name": "phones", "count": 3, "system": fields}])

    with pytest.raises(ConfigError, match=r"groups\[0\].system: speed: the trace gives"):
        load_config(system(speed=0.5, trace={"path": "f.csv"}))
    with pytest.raises(ConfigError, match="availability: the trace's windows"):
        load_config(system(availability={"on_s": 1, "off_s": 1}, trace={"path": "f.csv", "windows": "w.csv"}))
    with pytest.raises(ConfigError, match=r"trace.speed_unt: unknown field; allowed: format, path"):
        load_config(system(trace={"path": "f.csv", "speed_unt": "relative"}))
    with pytest.raises(ConfigError, match=r"availability.period: unknown field .* allowed: period_s, phase_s, windows"):
        load_config(system(availability={"windows": [[0, 1]], "period": 2}))
    # the simulated clock needs seconds per sample: the group's, or an absolute trace's
    raw = digits_config(groups=[{"name": "phones", "count": 3, "system": {"trace": {"path": "f.csv"}}}],
                        clock="simulated")
    with pytest.raises(ConfigError, match="a system.trace with absolute speeds"):
        load_config(raw)
    raw["groups"][0]["system"]["trace"]["speed_unit"] = "samples_per_s"
    assert load_config(raw).groups[0].system.trace.absolute


# -- FedScale ------------------------------------------------------------------------


def _fedscale(tmp_path, clients: int = 4) -> tuple[str, str]:
    """Both of FedScale's trace files, in its format, for a few clients."""
    capacity = {1000 + c: {"computation": 50.0 * (c + 1), "communication": 1000.0 * (c + 1)} for c in range(clients)}
    behave = {f"u{c}": {"duration": 500, "inactive": [30 + c, 90], "finish_time": 100 + c,
                        "active": [10, 60 + c], "model": "Pixel"} for c in range(clients)}
    paths = []
    for name, data in (("client_device_capacity", capacity), ("client_behave_trace", behave)):
        (tmp_path / name).write_bytes(pickle.dumps(data))
        paths.append(str(tmp_path / name))
    return paths[0], paths[1]


def test_fedscale_pickles_become_a_fleet_and_windows_in_fedrays_units(tmp_path):
    capacity, behave = _fedscale(tmp_path)
    fleet, windows = fedscale_tables(capacity, behave, 3)
    # 50 ms per sample of inference -> 3 x 0.05 s to train on it; 1000 kbit/s -> 1.024 Mbit/s
    np.testing.assert_allclose(fleet.speed, [0.15, 0.3, 0.45])
    np.testing.assert_allclose(fleet.bandwidth_mbps, [1.024, 2.048, 3.072])
    assert list(fleet.period_s) == [100.0, 101.0, 102.0]
    assert fleet.source[1] == "capacity:1001 behave:u1"
    assert list(windows.itertuples(index=False, name=None))[:4] == [(0, 10, 30), (0, 60, 90), (1, 10, 31), (1, 61, 90)]
    sampled, _ = fedscale_tables(capacity, behave, 3, seed=1)
    assert sampled.source.tolist() != fleet.source.tolist()
    assert sampled.source.tolist() == fedscale_tables(capacity, behave, 3, seed=1)[0].source.tolist()


def test_a_group_replays_fedscale_clients(tmp_path):
    capacity, behave = _fedscale(tmp_path)
    system = SystemSpec(trace=TraceSpec(path=capacity, windows=behave, format="fedscale"))
    speeds, systems = zip(*participant_systems(system, "phones", NAMES))
    np.testing.assert_allclose(speeds, [1.0, 0.5, 1 / 3])
    assert systems[0].simulated_seconds_per_sample == pytest.approx(0.15)
    assert systems[2].availability == Windows(windows=[(10, 32), (62, 90)], period_s=102)
    assert online_until(systems[0].availability, 0.0, 135.0) == (False, 160.0)  # 35 into its 2nd cycle


def test_fedscale_errors_name_the_file_and_the_client(tmp_path):
    capacity, behave = _fedscale(tmp_path, clients=2)
    with pytest.raises(TraceError, match="has 2 clients for the group's 3 participants"):
        fedscale_tables(capacity, behave, 3)
    (tmp_path / "broken").write_bytes(pickle.dumps({7: {"computation": 1.0}}))
    with pytest.raises(TraceError, match="client 7 has no 'communication'"):
        fedscale_tables(tmp_path / "broken", None, 1)
    (tmp_path / "text").write_text("not a pickle")
    with pytest.raises(TraceError, match="is not a FedScale pickle"):
        fedscale_tables(tmp_path / "text", None, 1)


# -- a traced fleet on Ray, under the simulated clock ----------------------------------------


def test_a_simulated_run_replays_the_trace_speeds_links_and_offline_windows(ray_session, tmp_path):
    """phones-1 is 4x slower with a slow link; phones-2 is offline from t=5 s to t=15 s."""
    pd.DataFrame({"speed": [1.0, 0.25, 1.0], "bandwidth_mbps": [None, 0.1, None]}).to_csv(
        tmp_path / "fleet.csv", index=False)
    pd.DataFrame({"participant": [0, 1, 2, 2], "start_s": [0, 0, 0, 15],
                  "end_s": [100, 100, 5, 100]}).to_csv(tmp_path / "windows.csv", index=False)
    group = {"name": "phones", "count": 3, "model": {"name": "mlp", "hidden": [16]}, "hosting": "pool",
             "workers": 2, "train": {"local_steps": 4, "batch_size": 32, "lr": 0.2},
             "resources": {"num_cpus": 0.25},
             "system": {"simulated_seconds_per_sample": 0.01,
                        "trace": {"path": str(tmp_path / "fleet.csv"), "windows": str(tmp_path / "windows.csv")}}}
    from orchestrator.loop.run import Orchestrator

    raw = digits_config(groups=[group], clock="simulated", stop={"max_aggregations": 40},
                        schedule={"mode": "async", "concurrency": 3})
    history = Orchestrator(load_config(raw)).run()
    dispatch = history[history.event == "dispatch"].set_index("task_id").time
    updates = history[history.event == "update"]
    started = dispatch.loc[updates.task_id].to_numpy()
    durations = pd.Series(updates.time.to_numpy() - started, index=updates.participant.to_numpy())
    np.testing.assert_allclose(durations["phones-0"], 1.28)  # 128 samples x 0.01 s
    link = 2 * updates.bytes.iloc[0] * 8 / 0.1e6  # the model down and the update up at 0.1 Mbit/s
    np.testing.assert_allclose(durations["phones-1"], 4 * 1.28 + link)
    # phones-2: nothing runs through its offline window; it is told when to come back
    mine = updates.participant == "phones-2"
    assert not ((started[mine] < 15.0) & (updates.time[mine].to_numpy() > 5.0)).any()
    assert (updates.time[mine] > 15.0).any() and (updates.time[mine] <= 5.0).any()
    away = history[history.participant.eq("phones-2") & history.event.isin(["unavailable", "dropout"])]
    assert away.detail.str.contains("offline").any() and away.time.between(5.0, 15.0).all()


def test_a_missing_trace_file_is_named_before_ray_starts(monkeypatch):
    monkeypatch.chdir(REPO)  # the example's paths are relative to the working directory
    raw = yaml.safe_load((REPO / "examples" / "traces" / "traces.yaml").read_text())
    raw["groups"][0]["system"]["trace"]["path"] = "no/such/fleet.csv"
    assert missing_data_files(load_config(raw)) == ["group phone: device trace not found: no/such/fleet.csv"]


def test_a_trace_file_is_read_by_the_one_table_reader(tmp_path):
    """traces.read_table is actors.data.tables.read_frame with the trace's errors: the same
    frame, a trace may have no rows, and an unreadable file is a TraceError naming it."""
    from actors.data.tables import read_frame
    from orchestrator.cluster.traces import read_table

    fleet = tmp_path / "fleet.csv"
    fleet.write_text("speed\n1.0\n2.0\n")
    assert read_table(fleet, "group g: trace").equals(read_frame(fleet, "group g: trace"))
    header_only = tmp_path / "none.csv"
    header_only.write_text("speed\n")
    assert read_table(header_only, "group g: trace").empty
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(TraceError, match=r"group g: trace: cannot read .*broken.parquet"):
        read_table(broken, "group g: trace")

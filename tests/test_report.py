"""Issue 8: `fedray report` tables and plots, from real small runs on local Ray.

One buffered run has a slow participant (so some of its updates arrive stale) and a
flaky group (so some tasks fail); one sync run is the other line of the overlay. The
tables are checked against the history they came from; the plots are decoded and
inspected, not just checked for existence.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pandas as pd
import pytest
from conftest import _ensure_local_ray, digits_config
from matplotlib import colors as mcolors
from matplotlib import image as mimage

from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator
from orchestrator.records.plots import OUTCOMES, task_outcomes
from orchestrator.records.report import load_run, participant_table, run_summary
from orchestrator.tools.cli import main

SECONDS_PER_SAMPLE = 0.0008  # ~0.3 s per task for ~360 samples: quick, yet ordered
SLOW_SPEED = 0.4  # the straggler takes 2.5x as long, yet returns before the run ends


def _group(name: str, count: int, **system) -> dict:
    return {
        "name": name, "count": count,
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.1},
        "resources": {"num_cpus": 0.5}, "hosting": "pool",
        "system": {"simulated_seconds_per_sample": SECONDS_PER_SAMPLE, **system},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory, _ray_shutdown_at_end):
    """Two real runs (buffered with a straggler, sync), written to run directories, under
    the simulated clock: the records a report reads are the same, without the sleeping."""
    _ensure_local_ray()  # what ray_session does; a module-scoped fixture cannot take it
    root = tmp_path_factory.mktemp("runs")
    buffered = load_config(digits_config(
        name="buffered", clock="simulated",  # the same records, with nobody sleeping out the straggler
        groups=[_group("fast", 2), _group("flaky", 1, dropout_prob=0.4), _group("slow", 1, speed=SLOW_SPEED)],
        schedule={"mode": "buffered", "buffer_size": 2},
        stop={"max_aggregations": 6},
        logging={"tensorboard": str(root / "tb")},
    ))
    Orchestrator(buffered, out_dir=root / "buffered").run()
    sync = load_config(digits_config(name="sync", clock="simulated", groups=[_group("site", 2)],
                                     stop={"max_aggregations": 2}))
    Orchestrator(sync, out_dir=root / "sync").run()
    return {"buffered": root / "buffered", "sync": root / "sync", "tb": root / "tb"}


def _history(run_dir) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "history.parquet")


def test_participant_table_counts_match_history(runs):
    history = _history(runs["buffered"])
    table = participant_table(history)
    assert sorted(table.index) == ["fast-0", "fast-1", "flaky-0", "slow-0"]
    for name, row in table.iterrows():
        own = history[history.participant == name]
        assert row["dispatched"] == (own.event == "dispatch").sum()
        assert row["accepted"] == (own.event == "update").sum()
        assert row["sent"] == own.event.isin(["update", "rejected", "late"]).sum()
        assert row["failed"] == own.event.isin(["failure", "timeout", "dropout"]).sum()
        accepted = own[own.event == "update"]
        if len(accepted):
            assert row["mean staleness"] == pytest.approx(accepted.staleness.mean())
        arrived = own[own.event.isin(["update", "rejected", "late"])]
        if len(arrived):
            assert row["local s"] == pytest.approx(arrived.simulated_seconds.mean())
            assert row["samples/s"] == pytest.approx(arrived["samples"].sum() / arrived.simulated_seconds.sum())
    assert table["accepted"].sum() == (history.event == "update").sum()
    # the straggler's slowdown shows in its local seconds (at least its simulated floor;
    # wall-clock ratios between participants are left to benchmarks on a noisy machine)
    slow = history[(history.participant == "slow-0") & (history.event == "update")]
    floor = slow["samples"].min() * SECONDS_PER_SAMPLE / SLOW_SPEED
    assert table.loc["slow-0", "local s"] >= floor > 0


def test_run_summary_matches_history_and_summary_json(runs):
    history = _history(runs["buffered"])
    summary = json.loads((runs["buffered"] / "summary.json").read_text())
    table = run_summary(history, summary)
    assert table["aggregations"] == summary["num_aggregations"] == 6
    assert table["updates accepted"] == summary["num_updates"]
    assert table["failures"] == summary["num_failures"]
    assert table["final accuracy"] == pytest.approx(summary["final_accuracy"])
    assert table["mean staleness"] == pytest.approx(summary["mean_staleness"])
    assert table["stop reason"] == summary["stop_reason"]


def test_timeline_pairs_every_dispatch_with_its_outcome(runs):
    history = _history(runs["buffered"])
    tasks = task_outcomes(history)
    assert len(tasks) == (history.event == "dispatch").sum()
    assert (tasks.end >= tasks.start).all()
    updates = history[history.event == "update"]
    assert (tasks.outcome.isin(["accepted", "accepted, stale"])).sum() == len(updates)
    assert (tasks.outcome == "accepted, stale").sum() == (updates.staleness > 0).sum() > 0
    assert (tasks.outcome == "failed").sum() == history.event.isin(["failure", "timeout", "dropout"]).sum()


def _image(path) -> np.ndarray:
    image = mimage.imread(path)  # decodes the PNG: a broken file raises here
    assert image.ndim == 3 and image.shape[0] >= 250 and image.shape[1] >= 400, image.shape
    rgb = image[..., :3]
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20, f"{path} is (nearly) one colour"
    return rgb


def _has_colour(rgb: np.ndarray, colour: str, min_pixels: int = 30) -> bool:
    target = np.array(mcolors.to_rgb(colour))
    return int((np.abs(rgb - target).max(axis=-1) < 0.02).sum()) >= min_pixels


def test_report_cli_prints_tables_and_writes_plots(runs, capsys):
    run_dir = runs["buffered"]
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    for name in ("fast-0", "flaky-0", "slow-0", "final accuracy", "mean staleness"):
        assert name in out
    plots = run_dir / "plots"
    for name in ("accuracy_vs_time", "accuracy_vs_aggregations", "timeline", "staleness"):
        _image(plots / f"{name}.png")
    timeline = _image(plots / "timeline.png")
    # bars of each outcome that happened are drawn in their colour
    for outcome in ("accepted", "accepted, stale"):
        assert _has_colour(timeline, OUTCOMES[outcome]), outcome
    failed = _history(run_dir).event.isin(["failure", "timeout", "dropout"]).any()
    assert _has_colour(timeline, OUTCOMES["failed"], min_pixels=5) == failed


def test_report_of_two_runs_overlays_them(runs, tmp_path, capsys):
    assert main(["report", str(runs["buffered"]), str(runs["sync"]), "--out", str(tmp_path)]) == 0
    assert "runs side by side" in capsys.readouterr().out
    rgb = _image(tmp_path / "compare_accuracy_vs_time.png")
    assert _has_colour(rgb, "C0") and _has_colour(rgb, "C1")  # one line per run


def test_tensorboard_logs_the_evaluations(runs):
    from tensorboardX.proto.event_pb2 import Event

    files = list(runs["tb"].glob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file"
    scalars: dict[str, dict[int, float]] = {}
    for file in files:
        data = file.read_bytes()
        pos = 0
        while pos < len(data):  # TFRecord framing: length, crc, payload, crc
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    history = _history(runs["buffered"])
    evals = history[history.event == "evaluation"]
    logged = scalars["eval/accuracy"]
    assert sorted(logged) == sorted(evals.version.astype(int))
    for version, accuracy in zip(evals.version.astype(int), evals.accuracy):
        assert logged[version] == pytest.approx(accuracy, abs=1e-6)
    assert len(scalars["updates/staleness"]) == (history.event == "update").sum()


def test_report_plots_tuning_trials(tmp_path, capsys):
    pd.DataFrame({"trial_id": [f"t{i}" for i in range(5)],
                  "objective": [12.0, 8.5, 20.1, 9.9, 15.3],
                  "num_cpus": [0.5, 1, 2, 1, 0.5]}).to_csv(tmp_path / "trials.csv", index=False)
    assert main(["report", str(tmp_path)]) == 0
    assert "t2" in capsys.readouterr().out
    _image(tmp_path / "plots" / "trials_objective.png")


def test_report_names_a_directory_it_cannot_read(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["report", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "history.parquet" in err


def test_load_run_reads_the_csv_twin(runs, tmp_path):
    """A run copied without its Parquet file still reports (CSV is written alongside)."""
    (tmp_path / "history.csv").write_bytes((runs["sync"] / "history.csv").read_bytes())
    run = load_run(tmp_path)
    assert participant_table(run.history)["accepted"].sum() == (run.history.event == "update").sum() == 2 * 2


def test_timeline_ends_tasks_in_flight_at_a_kill_at_the_resume(tmp_path):
    """After ``fedray run --resume`` the tasks the killed run had in flight never end in the
    history; they ended at the ``resumed`` event, not at the end of the run."""
    from orchestrator.records.history import History
    from orchestrator.records.plots import plot_timeline

    rows = [
        {"time": 1.0, "event": "dispatch", "participant": "a", "task_id": 0},
        {"time": 1.0, "event": "dispatch", "participant": "b", "task_id": 1},
        {"time": 2.0, "event": "update", "participant": "a", "task_id": 0, "staleness": 0},
        {"time": 2.5, "event": "dispatch", "participant": "a", "task_id": 2},  # lost at the kill
        {"time": 3.0, "event": "resumed", "version": 1},
        {"time": 3.5, "event": "dispatch", "participant": "a", "task_id": 3},
        {"time": 4.0, "event": "dispatch", "participant": "b", "task_id": 4},
        {"time": 5.0, "event": "update", "participant": "a", "task_id": 3, "staleness": 1},
        {"time": 9.0, "event": "stop", "version": 2},
    ]
    history = History(rows).frame()
    tasks = task_outcomes(history)  # in dispatch order
    assert tasks.outcome.tolist() == ["accepted", "interrupted", "interrupted",
                                      "accepted, stale", "still running"]
    assert tasks.end.tolist() == [2.0, 3.0, 3.0, 5.0, 9.0]
    assert "interrupted" in OUTCOMES and OUTCOMES["interrupted"] not in (
        colour for outcome, colour in OUTCOMES.items() if outcome != "interrupted")
    _image(plot_timeline(history, tmp_path / "timeline.png"))  # draws with the new outcome


def test_a_simulated_run_plots_simulated_seconds_or_wall_seconds_on_request(ray_session, tmp_path):
    from orchestrator.records.plots import on_clock

    group = {**digits_config()["groups"][0], "hosting": "pool", "workers": 2,
             "system": {"simulated_seconds_per_sample": 0.05, "speed": {"kind": "lognormal", "sigma": 1.0}}}
    Orchestrator(load_config(digits_config(groups=[group], clock="simulated")), out_dir=tmp_path / "sim").run()
    run = load_run(tmp_path / "sim")
    simulated, clock = on_clock(run)
    wall, wall_clock = on_clock(run, wall=True)
    assert (clock, wall_clock) == ("simulated", "wall")
    # 5 sync rounds, each at least one epoch of ~350 examples x 0.05 s: simulated seconds
    assert simulated.time.max() >= 5 * 300 * 0.05 and simulated.time.equals(run.history.time)
    assert wall.time.equals(run.history.wall_time)
    assert main(["report", str(tmp_path / "sim"), "--wall-clock"]) == 0
    assert (tmp_path / "sim" / "plots" / "accuracy_vs_time.png").exists()

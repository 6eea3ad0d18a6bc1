"""Integration on a real local Ray: per-participant files, missing files, resources, NaN.

Each participant reads its own CSV inside its actor (the cross-silo case); a missing file
is named with participant and path and never hangs the run; the Ray options of a group
reach the actor; a diverging participant's NaN update is rejected, never averaged in.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import digits_config

from actors.data import partition
from actors.data.load import load_shared_dataset
from actors.spec.data import DatasetSpec
from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator, RunError

REPO = Path(__file__).resolve().parents[1]


def write_digits_tables(directory: Path, names: list[str]) -> Path:
    """One CSV per name from an IID split of digits' training part, plus a test CSV."""
    data = load_shared_dataset(DatasetSpec())
    columns = [f"px{i}" for i in range(data.x_train.shape[1])]
    for name, idx in zip(names, partition.iid(len(data.y_train), len(names), seed=1)):
        frame = pd.DataFrame(data.x_train[idx], columns=columns)
        frame["digit"] = data.y_train[idx]
        frame.to_csv(directory / f"{name}.csv", index=False)
    test = pd.DataFrame(data.x_test, columns=columns)
    test["digit"] = data.y_test
    test.to_csv(directory / "test.csv", index=False)
    return directory / "test.csv"


def file_groups(directory: Path, clinics: int = 3) -> list[dict]:
    """A 2-CPU hospital and half-CPU clinics, each reading ``{group}_{index}.csv``."""
    data = {"source": "file", "path": str(directory / "{group}_{index}.csv"),
            "label_column": "digit", "num_classes": 10}
    train = {"local_epochs": 2, "batch_size": 32, "lr": 0.1}
    model = {"name": "mlp", "hidden": [32]}
    return [
        {"name": "hospital", "count": 1, "model": model, "data": data, "train": train,
         "resources": {"num_cpus": 2}},
        {"name": "clinic", "count": clinics, "model": model, "data": data, "train": train,
         "resources": {"num_cpus": 0.5}},
    ]


def file_config(directory: Path, test_csv: Path, clinics: int = 3, **overrides) -> dict:
    config = {
        "name": "files", "seed": 0, "groups": file_groups(directory, clinics),
        "evaluation": {"path": str(test_csv), "label_column": "digit"},
        "stop": {"max_aggregations": 5},
    }
    config.update(overrides)
    return config


def test_csv_per_participant_run_learns_and_resources_reach_the_actors(ray_session, tmp_path):
    test_csv = write_digits_tables(tmp_path, ["hospital_0", "clinic_0", "clinic_1", "clinic_2"])
    orchestrator = Orchestrator(load_config(file_config(tmp_path, test_csv)), out_dir=tmp_path / "run")
    history = orchestrator.run()

    evals = history[history.event == "evaluation"]
    assert evals.accuracy.iloc[0] < 0.3  # an untrained model
    assert evals.accuracy.iloc[-1] > 0.8  # learned from four private CSVs
    updates = history[history.event == "update"]
    assert sorted(updates.participant.unique()) == ["clinic-0", "clinic-1", "clinic-2", "hospital-0"]
    assert len(updates) == 5 * 4 and not (history.event == "rejected").any()

    info = json.loads((tmp_path / "run" / "participants.json").read_text())
    assert info["hospital-0"]["source"].endswith("hospital_0.csv")
    assert info["clinic-2"]["source"].endswith("clinic_2.csv")
    # resource options reach the actor: what Ray assigned, seen from inside it
    assert info["hospital-0"]["assigned_resources"]["CPU"] == 2.0
    assert info["hospital-0"]["torch_threads"] == 2
    for i in range(3):
        assert info[f"clinic-{i}"]["assigned_resources"]["CPU"] == 0.5
        assert info[f"clinic-{i}"]["torch_threads"] == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_accuracy"] == pytest.approx(evals.accuracy.iloc[-1])
    assert summary["num_updates"] == 20 and summary["num_aggregations"] == 5


@pytest.mark.parametrize("hosting", [{"hosting": "dedicated"}, {"hosting": "pool", "workers": 1}])
def test_missing_csv_is_named_and_the_run_goes_on_without_it(ray_session, tmp_path, hosting):
    test_csv = write_digits_tables(tmp_path, ["hospital_0", "clinic_0"])  # no clinic_1
    raw = file_config(tmp_path, test_csv, clinics=2, stop={"max_aggregations": 2})
    raw["groups"][1] |= hosting  # a pooled clinic is started in one call with its neighbour
    raw["groups"][0] |= {"hosting": "pool"}  # the hospital only trains beside them: on a warm worker
    config = load_config(raw)
    history = Orchestrator(config).run()

    failures = history[history.event == "failure"]
    assert failures.participant.tolist() == ["clinic-1"]
    assert failures.detail.iloc[0] == (
        f"participant clinic-1: data file not found: {tmp_path / 'clinic_1.csv'}"
    )
    updates = history[history.event == "update"]
    assert "clinic-1" not in set(updates.participant)
    assert len(updates) == 2 * 2  # the two that started did every round


def test_too_few_participants_left_raises_a_run_error_naming_the_file(ray_session, tmp_path):
    test_csv = write_digits_tables(tmp_path, ["hospital_0"])  # clinic_0, clinic_1 missing
    raw = file_config(tmp_path, test_csv, clinics=2, schedule={"min_participants": 2}, stop={"max_aggregations": 2})
    raw["groups"][0] |= {"hosting": "pool"}  # the clinics (auto) are the ones that fail
    config = load_config(raw)
    with pytest.raises(RunError) as info:
        Orchestrator(config).run()
    message = str(info.value)
    assert message.startswith("participants could not start:")
    for i in (0, 1):
        assert f"participant clinic-{i}: data file not found: {tmp_path / f'clinic_{i}.csv'}" in message
    assert "hospital-0" not in message


@pytest.mark.parametrize(("privacy", "reason"), [({}, "non-finite values"),
                                                  ({"secure_aggregation": True}, "refused to seal it")])
def test_a_diverging_participants_nan_update_is_rejected_not_averaged(ray_session, tmp_path, privacy, reason):
    """Under secure aggregation the driver cannot look: the participant checks and refuses."""
    config = digits_config(stop={"max_aggregations": 3}, privacy=privacy)
    config["groups"][0]["count"] = 2
    wild = {**config["groups"][0], "name": "wild", "count": 1,
            "train": {"local_epochs": 1, "batch_size": 32, "lr": 1e30}}  # SGD blows up to NaN
    config["groups"].append(wild)
    history = Orchestrator(load_config(config), out_dir=tmp_path).run()

    rejected = history[history.event == "rejected"]
    assert rejected.participant.tolist() == ["wild-0"] * 3
    assert rejected.detail.str.contains(reason).all()
    updates = history[history.event == "update"]
    assert "wild-0" not in set(updates.participant) and len(updates) == 3 * 2
    params = np.load(tmp_path / "global_params.npy")
    assert np.isfinite(params).all()
    evals = history[history.event == "evaluation"]
    assert evals.accuracy.iloc[-1] > evals.accuracy.iloc[0] + 0.3
    assert json.loads((tmp_path / "summary.json").read_text())["num_rejected"] == 3


def test_custom_resources_and_memory_reach_the_actor(ray_session):
    """The session's Ray has a custom resource for this (conftest)."""
    config = digits_config(stop={"max_aggregations": 1})
    config["groups"][0].update(count=1, resources={
        "num_cpus": 1, "memory": 64 * 1024**2, "resources": {"hospital_slot": 0.5},
    })
    orchestrator = Orchestrator(load_config(config))
    orchestrator.run()
    assigned = {n: i["assigned_resources"] for n, i in orchestrator.members_info.items()}
    assert set(assigned) == {"site-0"}
    for resources in assigned.values():
        assert resources["CPU"] == 1.0
        assert resources["hospital_slot"] == 0.5
        assert resources["memory"] == 64 * 1024**2

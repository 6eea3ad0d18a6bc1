"""The Participant as a plain Python class: no Ray, real torch, real digits."""

from __future__ import annotations

import os

import numpy as np
import pytest

from actors.data.tables import DataError
from actors.participant.participant import Participant
from actors.spec.data import DatasetSpec, FileData, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.spec.training import ModelSpec, TrainSpec
from strategies.types import GlobalState, Instructions


def spec(index: int = 0, seed: int = 11, **overrides) -> ParticipantSpec:
    fields = dict(
        name=f"site-{index}", group="site", index_in_group=index, seed=seed,
        model=ModelSpec(name="mlp", hidden=[16]), data=PartitionData(),
        train=TrainSpec(local_epochs=1, batch_size=32, lr=0.1),
        dataset=DatasetSpec(), partition_index=index, num_partitions=4,
    )
    fields.update(overrides)
    return ParticipantSpec(**fields)


def one_task(p: Participant, seed: int = 5, version: int = 3):
    params = p.initial_parameters()
    state = GlobalState(version, params, p.layout)
    return params, p.train(state, Instructions(task_id=7, seed=seed))


def test_trains_and_returns_a_float32_delta_of_the_model_layout():
    p = Participant(spec())
    params, update = one_task(p)
    assert update.participant == "site-0"
    assert update.base_version == 3 and update.task_id == 7 and update.kind == "delta"
    assert update.layout == p.layout
    assert update.payload.dtype == np.float32 and update.payload.shape == (p.layout.size,)
    assert np.isfinite(update.payload).all() and np.abs(update.payload).sum() > 0
    assert update.num_examples == p.describe()["num_examples"] > 0
    # the payload is exactly local model minus the global model it started from
    np.testing.assert_allclose(params + update.payload, p.local.get(), atol=1e-6)
    np.testing.assert_array_equal(p.initial_parameters(), params)  # what it was built with
    assert update.metrics["samples"] == update.num_examples  # one epoch
    assert update.train_seconds > 0


def test_same_seed_same_delta_other_seed_other_delta():
    a = one_task(Participant(spec()), seed=5)[1].payload
    b = one_task(Participant(spec()), seed=5)[1].payload
    c = one_task(Participant(spec()), seed=6)[1].payload
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_local_training_lowers_the_local_loss():
    p = Participant(spec(train=TrainSpec(local_epochs=5, batch_size=16, lr=0.1)))
    start = p.initial_parameters()
    state = GlobalState(0, start, p.layout)
    first = p.train(state, Instructions(0, seed=1)).metrics["train_loss"]
    trained = GlobalState(1, p.local.get(), p.layout)
    second = p.train(trained, Instructions(1, seed=2)).metrics["train_loss"]
    assert second < 0.5 * first


def test_each_participant_holds_a_different_shard():
    sizes = [Participant(spec(index=i)).describe()["num_examples"] for i in range(4)]
    assert sum(sizes) == 1438  # the digits training split (80% of 1797), fully dealt out
    info = Participant(spec(index=1)).describe()
    assert info["num_classes"] == 10 and info["input_shape"] == (64,)
    assert info["torch_threads"] == 1 and "assigned_resources" not in info  # no Ray here


def test_reads_its_own_csv(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    path = tmp_path / "clinic_0.csv"
    import pandas as pd

    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": y}).to_csv(path, index=False)
    p = Participant(spec(data=FileData(source="file", path=str(tmp_path / "clinic_{index}.csv"),
                                       num_classes=2, test_fraction=0.25),
                         dataset=None, partition_index=None))
    info = p.describe()
    assert (info["num_examples"], info["num_test_examples"], info["input_shape"]) == (30, 10, (3,))
    _, update = one_task(p)
    assert update.num_examples == 30


def test_missing_csv_names_the_participant_and_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "clinic_2.csv"
    bad = spec(index=2, data=FileData(source="file", path=str(tmp_path / "nowhere" / "clinic_{index}.csv"),
                                      num_classes=10), dataset=None, partition_index=None)
    with pytest.raises(DataError, match=f"participant site-2: data file not found: {missing}"):
        Participant(bad).describe()  # its first call: a typed error the driver tells from a crash


def test_private_state_is_written_only_when_a_restart_would_need_it(tmp_path):
    """FedAvg without a simulator keeps nothing a restart needs (its simulator's random
    state is as seeded, which a restarted process seeds again), so it writes no file at
    all; FedPer's personal model changes every task, so its file follows every task."""
    from actors.participant import private_state

    for strategy, saved_after_two in (("fedavg", 0), ("fedper", 2)):
        where = str(tmp_path / strategy)
        p = Participant(spec(state_dir=where, strategy=strategy))
        state = GlobalState(0, p.initial_parameters(), p.layout)
        for task_id in range(2):
            p.train(state, Instructions(task_id=task_id, seed=task_id))
        assert p.private.tasks_done == 2
        assert private_state.load(where).tasks_done == saved_after_two, strategy
        assert os.path.exists(where) == bool(saved_after_two)  # nothing to delete at the run's end either

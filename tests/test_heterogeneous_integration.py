"""Heterogeneous architectures end to end on a real local Ray: mixed CNN/MLP/GRU runs
under sync and buffered schedules, a late joiner's warm start, personal heads that never
leave their actor, and the example configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import digits_config

from orchestrator.config import ConfigError, load_config
from orchestrator.loop.run import Orchestrator

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _group(name: str, model: dict, view: str, count: int = 1, **extra) -> dict:
    return {
        "name": name, "count": count, "model": model,
        "data": {"source": "partition", "view": view},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.1},
        "resources": {"num_cpus": 0.5}, "hosting": "pool", **extra,
    }


MIXED = [
    _group("cnn", {"name": "cnn", "channels": [4], "hidden": 16}, "image"),
    _group("mlp", {"name": "mlp", "hidden": [16]}, "flat"),
    _group("gru", {"name": "gru", "hidden": 16}, "sequence"),
]


class Recording(Orchestrator):
    """A real orchestrator that also keeps every update the driver receives."""

    received: list

    def _check(self, update, member):
        self.__dict__.setdefault("received", []).append(update)
        return super()._check(update, member)


@pytest.mark.parametrize(("strategy", "mode"), [("fedmd", "sync"), ("feddf", "buffered")])
def test_mixed_cnn_mlp_gru_run_completes(ray_session, tmp_path, strategy, mode):
    config = load_config(digits_config(
        dataset={"name": "digits", "public_size": 60, "partition": {"kind": "iid"}},
        groups=MIXED, strategy={"name": strategy},
        schedule={"mode": mode} | ({"buffer_size": 2} if mode == "buffered" else {}), stop={"max_aggregations": 3},
    ))
    orch = Recording(config, out_dir=tmp_path)
    history = orch.run()
    assert (history.event == "aggregation").sum() == 3
    assert not history.event.isin(["rejected", "failure"]).any(), history[history.event == "rejected"].detail
    updates = history[history.event == "update"]
    groups = {"cnn", "mlp", "gru"}
    if mode == "sync":  # every selected participant answers every round
        assert set(updates.group) == groups
    else:  # FedBuff keeps all three busy; which finish first is timing, but a participant has
        # one task in flight at a time, so the first buffer of 2 already mixes two groups
        assert set(history[history.event == "dispatch"].group) == groups
        assert set(updates.group) <= groups and len(set(updates.group)) >= 2
        assert len(updates) >= 3 * 2  # 3 aggregations of buffer_size 2
    evals = history[history.event == "evaluation"]
    assert not np.isnan(evals.accuracy.iloc[-1])  # mean of the participants' own test accuracy
    assert updates.accuracy.notna().all()
    if strategy == "fedmd":  # soft labels: 60 examples x 10 classes x 4 bytes, any architecture
        assert set(updates.bytes) == {60 * 10 * 4}
        assert all(u.layout.names == ("logits",) for u in orch.received)
        assert updates.accuracy.max() > 0.3  # its own model after private training
    else:  # feddf: whole models, one family per architecture, each moved by aggregation
        families = sorted({n.split("/")[0] for n in orch.state.layout.names})
        assert families == ["f0", "f1", "f2"]
        start = orch.global_model.params  # the initial vector; aggregation makes new ones
        for family in families:
            part = [n for n in orch.state.layout.names if n.startswith(family + "/")]
            sl = np.concatenate([np.arange(orch.state.layout.slices[n].start, orch.state.layout.slices[n].stop) for n in part])
            assert not np.allclose(orch.params[sl], start[sl]), family
    assert (tmp_path / "summary.json").exists()


def test_fedper_late_joiner_warm_starts_and_personal_heads_never_leave(ray_session):
    groups = [
        _group("early", {"name": "mlp", "hidden": [32]}, "flat", count=2),
        _group("late", {"name": "mlp", "hidden": [32]}, "flat", join_at=4),
    ]
    config = load_config(digits_config(
        dataset={"name": "digits", "partition": {"kind": "iid"}},
        groups=groups, strategy={"name": "fedper"}, stop={"max_aggregations": 6},
    ))
    orch = Recording(config)
    history = orch.run()
    dispatched = history[history.event == "dispatch"]
    assert dispatched[dispatched.group == "late"].version.min() >= 4  # no task before join_at

    # personal heads never travel: every update the driver got holds body parameters only
    assert orch.received
    for update in orch.received:
        assert update.layout.names and all(n.startswith("body.") for n in update.layout.names)
        assert update.payload.size == update.layout.size
    assert all(n.startswith("body.") for n in orch.state.layout.names)

    # a late joiner's first evaluation beats a fresh model's first evaluation (same data
    # size, same one epoch of training, but a warm-started body)
    updates = history[history.event == "update"].sort_values("task_id")
    late_first = updates[updates.group == "late"].accuracy.iloc[0]
    fresh_first = updates[updates.group == "early"].groupby("participant").accuracy.first()
    assert late_first > fresh_first.max() + 0.05, (late_first, fresh_first.tolist())


def test_weight_averaging_refuses_mixed_architectures_naming_participants(ray_session):
    config = load_config(digits_config(groups=MIXED[:2], stop={"max_aggregations": 1}))
    from orchestrator.loop.run import RunError

    with pytest.raises(RunError, match=r"participants cnn-0 and mlp-0 have different model layouts"):
        Orchestrator(config).run()


def test_soft_label_strategy_without_public_set_is_a_config_error():
    with pytest.raises(ConfigError, match="public_size"):
        load_config(digits_config(groups=MIXED, strategy={"name": "dsfl"}))
    with pytest.raises(ConfigError, match="secure_aggregation is not supported with strategy 'fedper'"):
        load_config(digits_config(strategy={"name": "fedper"}, privacy={"secure_aggregation": True}))
    with pytest.raises(ConfigError, match="join_at"):
        load_config(digits_config(groups=[_group("g", {"name": "mlp"}, "flat", join_at=2)]))


@pytest.mark.parametrize("name", ["heterogeneous_models.yaml", "multimodal.yaml"])
def test_examples_are_valid_configs(name):
    config = load_config(EXAMPLES / name)
    assert len({g.model.name for g in config.groups}) >= 2
    assert np.all([g.data.view for g in config.groups])

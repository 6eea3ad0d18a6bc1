"""Strategies' client halves on a real participant (no Ray), SCAFFOLD and Ditto, plugins."""

from __future__ import annotations

import numpy as np
import pytest

from actors.participant.participant import Participant
from actors.spec.data import DatasetSpec, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.spec.training import ModelSpec, TrainSpec
from orchestrator.config import ConfigError, load_config
from strategies import build_strategy, get_strategy_class
from strategies.base import ServerContext
from strategies.hygiene import rejection_reason
from strategies.types import GlobalState, Instructions, Layout, Update
from tests.conftest import digits_config


def spec(strategy: str = "fedavg", options: dict | None = None, state_dir: str | None = None,
         index: int = 0, **data) -> ParticipantSpec:
    return ParticipantSpec(
        name=f"site-{index}", group="site", index_in_group=index, seed=11,
        model=ModelSpec(name="mlp", hidden=[16]), data=PartitionData(**data),
        train=TrainSpec(local_epochs=1, batch_size=32, lr=0.1),
        dataset=DatasetSpec(partition={"kind": "dirichlet", "alpha": 0.3}), partition_index=index,
        num_partitions=4, strategy=strategy, strategy_options=options or {}, state_dir=state_dir,
    )


def task(p: Participant, params: np.ndarray, version: int = 1, seed: int = 5, extra=None) -> Update:
    return p.train(GlobalState(version, params, p.layout, extra or {}), Instructions(task_id=version, seed=seed))


# -- SCAFFOLD ---------------------------------------------------------------------------
def test_scaffold_server_half_moves_x_by_the_mean_delta_and_c_by_the_sum_over_n():
    lay = Layout(("w",), ((2,),))
    s = build_strategy("scaffold", {"server_lr": 2.0})
    s.setup(ServerContext(lay, num_participants=10))
    ups = [Update("a", 0, "delta", np.array([1, 0], np.float32), lay, 1,
                  extras={"control": np.array([1, 2], np.float32)}),
           Update("b", 0, "delta", np.array([0, 3], np.float32), lay, 3, weight=0.5,
                  extras={"control": np.array([4, 4], np.float32)})]
    x = s.aggregate(np.zeros(2, np.float32), ups)
    # x += 2 * (1*1*[1,0] + 3*0.5*[0,3]) / 4; c += (1*[1,2] + 0.5*[4,4]) / 10
    np.testing.assert_allclose(x, [0.5, 2.25])
    np.testing.assert_allclose(s.broadcast()["control"], [0.3, 0.4])
    restored = build_strategy("scaffold")
    restored.setup(ServerContext(lay, num_participants=10))
    restored.load_state_dict(s.state_dict())  # c is checkpointed with the strategy
    np.testing.assert_array_equal(restored.broadcast()["control"], s.broadcast()["control"])


def test_scaffold_client_without_correction_is_fedavg_and_refreshes_its_variate():
    start = Participant(spec()).initial_parameters()
    plain = task(Participant(spec()), start)
    p = Participant(spec("scaffold"))
    first = task(p, start)
    np.testing.assert_array_equal(first.payload, plain.payload)  # c = c_i = 0: plain SGD
    steps = first.metrics["steps"]
    expected_c = -first.payload / np.float32(steps * 0.1)  # option II: (x - y) / (K lr)
    np.testing.assert_allclose(first.extras["control"], expected_c, rtol=1e-5)
    np.testing.assert_allclose(p.client.state["control"], expected_c, rtol=1e-5)
    # with a server variate the local steps follow g - c_i + c, so the delta changes
    server_c = np.full_like(start, 0.01)
    corrected = task(p, start, version=2, extra={"control": server_c})
    assert not np.allclose(corrected.payload, plain.payload)
    new_c = expected_c - server_c - corrected.payload / np.float32(corrected.metrics["steps"] * 0.1)
    np.testing.assert_allclose(p.client.state["control"], new_c, rtol=1e-4, atol=1e-6)


def test_an_update_without_its_declared_extras_or_with_nan_ones_is_rejected():
    lay = Layout(("w",), ((2,),))
    extras = get_strategy_class("scaffold").update_extras
    up = Update("a", 0, "delta", np.zeros(2, np.float32), lay, 1)
    assert "missing 'control'" in rejection_reason(up, lay, extras)
    up.extras = {"control": np.array([0, np.nan], np.float32)}
    assert "control has 1 non-finite" in rejection_reason(up, lay, extras)
    up.extras = {"control": np.zeros(3, np.float32)}
    assert "control has 3 values" in rejection_reason(up, lay, extras)
    up.extras = {"control": np.zeros(2, np.float32)}
    assert rejection_reason(up, lay, extras) is None


# -- Ditto ------------------------------------------------------------------------------
def test_ditto_sends_fedavgs_delta_and_keeps_a_personal_model_it_reports_on():
    start = Participant(spec()).initial_parameters()
    plain = task(Participant(spec(test_fraction=0.25)), start)
    p = Participant(spec("ditto", {"lam": 0.5}, test_fraction=0.25))
    update = task(p, start)
    np.testing.assert_array_equal(update.payload, plain.payload)  # the global model's training
    personal = p.client.state["personal"]
    assert not np.allclose(personal, start + update.payload)  # trained separately, pulled to start
    assert 0 <= update.metrics["test_accuracy"] <= 1 and "personal_loss" in update.metrics
    p.local.set(personal)
    assert p.local.evaluate()["accuracy"] == update.metrics["test_accuracy"]  # what it reports


def test_ditto_lambda_pulls_the_personal_model_towards_the_global_one():
    start = Participant(spec()).initial_parameters()
    far = [np.linalg.norm(_personal_after(lam, start) - start) for lam in (0.0, 10.0)]
    assert far[1] < 0.5 * far[0]


def _personal_after(lam: float, start: np.ndarray) -> np.ndarray:
    p = Participant(spec("ditto", {"lam": lam, "personal_epochs": 3}))
    task(p, start)
    return p.client.state["personal"]


# -- client state survives a restart ------------------------------------------------------
@pytest.mark.parametrize("strategy, key", [("fedper", "model"), ("ditto", "personal"), ("scaffold", "control")])
def test_client_state_is_restored_by_a_restarted_participant(tmp_path, strategy, key):
    first = Participant(spec(strategy, state_dir=str(tmp_path)))
    start = first.initial_parameters()
    state = GlobalState(1, start, first.layout) if strategy != "fedper" else _parts_state(first)
    first.train(state, Instructions(task_id=1, seed=3))
    saved = first.client.state[key]
    again = Participant(spec(strategy, state_dir=str(tmp_path)))  # Ray restarts the actor
    again.describe()
    np.testing.assert_array_equal(again.client.state[key], saved)
    if strategy == "fedper":  # the next task starts from the personal head it had
        again.client.restore(again.local)
        np.testing.assert_array_equal(again.local.get(), saved)


def _parts_state(p: Participant) -> GlobalState:
    from strategies.partial import shared_part, union_layout

    body = shared_part(p.layout, "body")
    layout = union_layout([body])
    values = p.initial_parameters()[[i for n in body.names for i in range(*p.layout.slices[n].indices(p.layout.size))]]
    return GlobalState(1, values.astype(np.float32), layout)


# -- plugins and declared capabilities ----------------------------------------------------
def test_a_users_strategy_loads_from_package_module_class():
    cfg = load_config(digits_config(strategy={"name": "tests.plugins:HalfStep", "fraction": 0.25}))
    assert cfg.strategy.build().params.fraction == 0.25
    with pytest.raises(ConfigError, match="has no option\\(s\\) \\['step'\\]; allowed: fraction"):
        load_config(digits_config(strategy={"name": "tests.plugins:HalfStep", "step": 1}))
    with pytest.raises(ConfigError, match="is not a fedray Strategy class"):
        load_config(digits_config(strategy={"name": "tests.plugins:NotAStrategy"}))
    with pytest.raises(ConfigError, match="cannot import 'tests.nowhere'"):
        load_config(digits_config(strategy={"name": "tests.nowhere:X"}))


def test_the_config_reads_declared_capabilities_with_reasons():
    with pytest.raises(ConfigError, match="not supported with strategy 'scaffold' \\(its updates carry control"):
        load_config(digits_config(strategy={"name": "scaffold"}, privacy={"secure_aggregation": True}))
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    raw = digits_config(strategy={"name": "ditto"})
    raw["groups"][0]["train"] = {"dp_sgd": dp}
    with pytest.raises(ConfigError, match="dp_sgd is not supported with strategy 'ditto'.*fedavg"):
        load_config(raw)


def test_scaffold_and_ditto_run_end_to_end(ray_session):
    from orchestrator.loop.run import Orchestrator

    for name in ("scaffold", "ditto", "tests.plugins:HalfStep"):
        raw = digits_config(strategy={"name": name}, stop={"max_aggregations": 3})
        raw["groups"][0]["data"] = {"source": "partition", "test_fraction": 0.2}
        orch = Orchestrator(load_config(raw))
        history = orch.run()
        evals = history[history.event == "evaluation"].accuracy
        assert (history.event == "aggregation").sum() == 3 and evals.iloc[-1] > evals.iloc[0], name
        assert (history.event == "rejected").sum() == 0, name
        if name == "ditto":  # each update carries its personal model's own-test accuracy
            assert history[history.event == "update"].accuracy.notna().all()

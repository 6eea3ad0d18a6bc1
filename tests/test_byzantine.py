"""Byzantine participants on a real local Ray: 2 of 8 send sign-flipped x10 deltas.

The attack is configured (``system.attack``), applied inside the attackers' own actors;
the driver and the strategies cannot tell them apart from honest participants.
FedAvg is dragged off course; Median, TrimmedMean and Krum stay close to a clean run.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import digits_config

from actors.participant.attacks import apply_attack
from actors.participant.participant import Participant
from actors.spec.system import AttackSpec
from orchestrator.cluster.specs import participant_specs
from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator
from strategies.types import GlobalState, Instructions

ROUNDS = 12
TRAIN = {"local_epochs": 2, "batch_size": 16, "lr": 0.1}


def _config(strategy: dict, attacked: bool) -> dict:
    honest = {"name": "honest", "count": 6, "model": {"name": "mlp", "hidden": [64]},
              "train": TRAIN, "resources": {"num_cpus": 0.5}, "hosting": "pool"}
    byzantine = {**honest, "name": "byzantine", "count": 2}
    if attacked:
        byzantine["system"] = {"attack": {"kind": "sign_flip", "scale": 10}}
    return digits_config(
        groups=[honest, byzantine], strategy=strategy,
        stop={"max_aggregations": ROUNDS}, evaluation={"every": ROUNDS},
    )


def _final_accuracy(ray_session, strategy: dict, attacked: bool) -> float:
    history = Orchestrator(load_config(_config(strategy, attacked))).run()
    assert (history.event == "update").sum() == ROUNDS * 8  # every attacker update got in
    return float(history[history.event == "evaluation"].accuracy.iloc[-1])


_clean: dict[str, float] = {}


@pytest.fixture
def clean_accuracy(ray_session) -> float:
    """FedAvg with all 8 honest, run once per module and shared by the comparisons."""
    if "fedavg" not in _clean:
        _clean["fedavg"] = _final_accuracy(ray_session, {"name": "fedavg"}, attacked=False)
    return _clean["fedavg"]


@pytest.mark.slow
def test_fedavg_is_dragged_off_by_two_sign_flippers(ray_session, clean_accuracy):
    attacked = _final_accuracy(ray_session, {"name": "fedavg"}, attacked=True)
    print(f"fedavg: attacked {attacked:.3f}, clean {clean_accuracy:.3f}")
    assert clean_accuracy > 0.85
    assert attacked < clean_accuracy - 0.3


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy",
    [{"name": "median"}, {"name": "trimmed_mean", "beta": 0.25}, {"name": "krum", "f": 2}],
    ids=["median", "trimmed_mean", "krum"],
)
def test_robust_strategy_stays_within_3_points_of_clean(ray_session, clean_accuracy, strategy):
    attacked = _final_accuracy(ray_session, strategy, attacked=True)
    print(f"{strategy['name']}: attacked {attacked:.3f}, clean fedavg {clean_accuracy:.3f}")
    assert attacked >= clean_accuracy - 0.03, (strategy, attacked, clean_accuracy)


def test_an_attacker_sends_its_honest_delta_flipped_and_scaled():
    """The participant-side hook, without Ray: same data and seed, with and without attack."""
    specs = {spec.name: spec for spec, _ in participant_specs(load_config(_config({"name": "fedavg"}, True)), "run")}
    attacker = specs["byzantine-0"]
    honest_twin = attacker.model_copy(update={"system": attacker.system.model_copy(update={"attack": None})})
    bad, good = Participant(attacker), Participant(honest_twin)
    state = GlobalState(0, good.initial_parameters(), good.layout)
    task = Instructions(task_id=0, seed=5)
    sent, honest = bad.train(state, task).payload, good.train(state, task).payload
    assert np.abs(honest).max() > 0
    np.testing.assert_allclose(sent, -10 * honest, rtol=1e-5, atol=1e-7)


def test_noise_attack_replaces_the_payload():
    payload = np.ones(1000, np.float32)
    sent = apply_attack(payload, AttackSpec(kind="noise", scale=3.0), seed=1)
    assert sent.dtype == np.float32 and abs(float(sent.std()) - 3.0) < 0.3 and abs(float(sent.mean())) < 0.5
    assert apply_attack(payload, None, seed=1) is payload

"""Soft labels: the KD loss, consensus aggregation, entropy reduction, FedDF's families,
the public set and a participant's soft-label task. Pure math and plain PyTorch, no Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from actors.data.load import load_shared_dataset
from actors.participant.participant import Participant
from actors.spec.data import DatasetSpec, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.spec.training import ModelSpec, TrainSpec
from actors.training.distillation import distill, kd_loss, load_public_set, predict_logits
from actors.training.models import build_model
from strategies.base import ServerContext
from strategies.distillation import DSFL, FedDF, FedMD, softmax
from strategies.partial import union_layout
from strategies.types import GlobalState, Instructions, Layout, Update


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_loss_matches_hand_computed_kl_times_t_squared():
    student = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 2.0, 0.0]])
    t = 2.0
    p = _softmax([0.0, 1.0, 0.0])  # teacher / T
    q = _softmax([0.5, 0.0, -0.5])  # student / T
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert float(kd_loss(student, teacher, t)) == pytest.approx(t * t * kl, rel=1e-5)
    assert float(kd_loss(student, teacher, t)) != pytest.approx(kl, rel=1e-2)  # the T^2 is there


def test_kd_loss_is_zero_for_identical_logits_and_averages_over_rows():
    logits = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    assert float(kd_loss(logits, logits, 3.0)) == pytest.approx(0.0, abs=1e-7)
    one = float(kd_loss(logits[:1], torch.zeros(1, 2), 1.0))
    two = float(kd_loss(torch.cat([logits[:1], logits[:1]]), torch.zeros(2, 2), 1.0))
    assert two == pytest.approx(one)  # batch mean, not sum


def _logit_update(name: str, values, n: int = 1, weight: float = 1.0) -> Update:
    payload = np.asarray(values, np.float32).reshape(-1)
    up = Update(name, 0, "logits", payload, Layout(("logits",), ((payload.size // 2, 2),)), n)
    up.weight = weight
    return up


def test_fedmd_consensus_is_the_example_weighted_mean():
    ups = [_logit_update("a", [[1, 0], [0, 0]], n=1), _logit_update("b", [[3, 0], [0, 4]], n=3)]
    consensus = FedMD().aggregate(np.zeros(4, np.float32), ups)
    np.testing.assert_allclose(consensus, [2.5, 0.0, 0.0, 3.0])


def test_fedmd_stale_update_pulls_the_consensus_less():
    old = np.array([0.0, 0.0], np.float32)
    fresh = FedMD().aggregate(old, [_logit_update("a", [4, 0])])
    stale = FedMD().aggregate(old, [_logit_update("a", [4, 0], weight=0.25)])
    np.testing.assert_allclose(fresh, [4, 0])
    np.testing.assert_allclose(stale, [1, 0])


def test_dsfl_entropy_reduction_sharpens_the_average_of_probabilities():
    # probabilities [0.8, 0.2] and [0.4, 0.6] average to [0.6, 0.4]; with T=0.5 that is
    # [0.36, 0.16] / 0.52
    ups = [_logit_update("a", np.log([0.8, 0.2])), _logit_update("b", np.log([0.4, 0.6]))]
    out = DSFL(DSFL.Params(era_temperature=0.5)).aggregate(np.zeros(2, np.float32), ups)
    np.testing.assert_allclose(np.exp(out), [0.36 / 0.52, 0.16 / 0.52], rtol=1e-5)
    mean = np.array([0.6, 0.4])
    entropy = lambda p: float(-(p * np.log(p)).sum())  # noqa: E731
    assert entropy(np.exp(out)) < entropy(mean)


def test_dsfl_with_temperature_one_is_the_plain_probability_mean():
    ups = [_logit_update("a", [[2, 0], [0, 1]]), _logit_update("b", [[0, 0], [5, 1]])]
    out = DSFL(DSFL.Params(era_temperature=1.0)).aggregate(np.zeros(4, np.float32), ups)
    expected = (softmax(np.array([[2, 0], [0, 1]], np.float32)) + softmax(np.array([[0, 0], [5, 1]], np.float32))) / 2
    np.testing.assert_allclose(np.exp(out).reshape(2, 2), expected, rtol=1e-5)


def test_dsfl_refuses_an_empty_batch_like_every_strategy():
    with pytest.raises(ValueError, match="cannot aggregate an empty batch of updates"):
        DSFL().aggregate(np.zeros(4, np.float32), [])


class SumModels:
    """Server models reduced to numbers: a model's "logits" are the sum of its parameters,
    and distilling adds the teacher's mean. Enough to check FedDF's ensemble logic."""

    prefixes = ("f0/", "f1/")

    def __init__(self, layouts):
        self.layouts, self.seen = layouts, []

    def layout(self, prefix):
        return self.layouts[prefix]

    def logits(self, prefix, vector):
        self.seen.append((prefix, vector.copy()))
        return np.array([[vector.sum()]], np.float32)

    def distill(self, prefix, vector, teacher, temperature, epochs, lr, seed):
        return vector + teacher.mean()


def test_feddf_averages_within_each_family_and_distills_received_models():
    small = Layout(("body.w", "head.w"), ((2,), (1,)))
    big = Layout(("body.w", "head.w"), ((3,), (1,)))
    glob = Layout(union_layout([small], "f0/").names + union_layout([big], "f1/").names,
                  small.shapes + big.shapes)
    strategy = FedDF()
    strategy.setup(ServerContext(glob, num_participants=3))
    ups = [Update("a", 0, "delta", np.array([1, 1, 1], np.float32), small, 1),
           Update("b", 0, "delta", np.array([3, 3, 3], np.float32), small, 1),
           Update("c", 0, "delta", np.array([5, 5, 5, 5], np.float32), big, 1)]
    plain = strategy.aggregate(np.zeros(7, np.float32), ups)
    np.testing.assert_allclose(plain, [2, 2, 2, 5, 5, 5, 5])  # no mixing across families
    models = SumModels({"f0/": small, "f1/": big})
    strategy.setup(ServerContext(glob, num_participants=3, models=models))
    out = strategy.aggregate(np.zeros(7, np.float32), ups)
    # the teacher is the mean of every received model's logits: (3 + 9 + 20) / 3
    np.testing.assert_allclose(out, plain + 32 / 3, rtol=1e-6)
    assert [p for p, _ in models.seen] == ["f0/", "f0/", "f1/"]  # each by its own family
    np.testing.assert_allclose(models.seen[2][1], [5, 5, 5, 5])


def test_public_set_is_held_out_of_the_training_split():
    base = load_shared_dataset(DatasetSpec(public_size=0))
    held = load_shared_dataset(DatasetSpec(public_size=100))
    assert len(held.x_train) + 100 == len(base.x_train)
    np.testing.assert_array_equal(held.x_public, base.x_train[:100])
    np.testing.assert_array_equal(held.x_train, base.x_train[100:])
    np.testing.assert_array_equal(held.x_test, base.x_test)
    assert load_public_set(DatasetSpec(public_size=100), "image").shape == (100, 1, 8, 8)
    assert load_public_set(DatasetSpec(public_size=100), "sequence").shape == (100, 8, 8)
    with pytest.raises(ValueError, match="public_size"):
        load_public_set(DatasetSpec(), "flat")


def test_distill_moves_a_student_towards_the_teacher():
    torch.manual_seed(0)
    x = torch.as_tensor(load_public_set(DatasetSpec(public_size=128), "flat"))
    teacher = build_model("mlp", {"hidden": [16]}, (64,), 10)
    student = build_model("mlp", {"hidden": [16]}, (64,), 10)
    target = predict_logits(teacher, x)
    before = float(kd_loss(predict_logits(student, x), target, 2.0))
    distill(student, x, target, TrainSpec(optimizer="adam", lr=0.03), 2.0, epochs=8, seed=0)
    after = float(kd_loss(predict_logits(student, x), target, 2.0))
    assert after < 0.5 * before


def _spec(model: dict, view: str, public: int = 60, **options) -> ParticipantSpec:
    return ParticipantSpec(
        name="p-0", group="p", index_in_group=0, seed=1, model=ModelSpec(**model),
        data=PartitionData(view=view), train=TrainSpec(lr=0.1),
        dataset=DatasetSpec(public_size=public), partition_index=0, num_partitions=4,
        strategy="fedmd", strategy_options=options,
    )


def test_participant_soft_label_task_sends_logits_on_the_public_set_in_its_view():
    p = Participant(_spec({"name": "cnn", "channels": [4], "hidden": 16}, "image",
                          temperature=2.0, distill_epochs=5))
    layout = Layout(("logits",), ((60, 10),))
    first = p.train(GlobalState(0, np.zeros(600, np.float32), layout), Instructions(0, seed=1))
    assert first.kind == "logits" and first.layout == layout and first.payload.dtype == np.float32
    assert first.nbytes == 60 * 10 * 4
    assert "distill_loss" not in first.metrics  # version 0: nothing to distill yet
    assert 0.0 <= first.metrics["test_accuracy"] <= 1.0
    consensus = np.tile(np.eye(10, dtype=np.float32)[3] * 5, 60)  # "everything is a 3"
    second = p.train(GlobalState(1, consensus, layout), Instructions(1, seed=2))
    assert "distill_loss" in second.metrics
    assert second.nbytes == first.nbytes  # soft labels do not grow with the model


def test_soft_label_state_rejects_misshapen_or_nan_logits_and_averages_reports():
    from types import SimpleNamespace

    from conftest import digits_config

    from orchestrator.config import load_config
    from orchestrator.server.global_state import SoftLabels
    from strategies.hygiene import rejection_reason

    config = load_config(digits_config(
        dataset={"name": "digits", "public_size": 50}, strategy={"name": "fedmd"}))
    state = SoftLabels(config, [SimpleNamespace(name="site-0", info={"num_classes": 10})], config.strategy.build())
    assert state.layout == Layout(("logits",), ((50, 10),)) and not state.params.any()
    expected = state.expected_layout("site-0")
    good = Update("site-0", 0, "logits", np.zeros(500, np.float32), expected, 10)
    assert rejection_reason(good, expected) is None
    short = Update("site-0", 0, "logits", np.zeros(490, np.float32), Layout(("logits",), ((49, 10),)), 10)
    assert "layout does not match" in rejection_reason(short, expected)
    nan = Update("site-0", 0, "logits", np.full(500, np.nan, np.float32), expected, 10)
    assert "non-finite" in rejection_reason(nan, expected)
    assert np.isnan(state.evaluate(state.params)["accuracy"])  # nobody has reported yet
    for name, acc in (("a", 0.5), ("b", 0.9), ("a", 0.7)):  # the latest report counts
        state.observe(Update(name, 0, "logits", good.payload, expected, 1,
                             metrics={"test_accuracy": acc, "test_loss": 1.0}))
    assert state.evaluate(state.params)["accuracy"] == pytest.approx(0.8)


def test_consensus_term_is_weighted_kd_on_a_random_public_batch():
    from actors.training.distillation import consensus_term

    torch.manual_seed(0)
    x = torch.randn(20, 64)
    teacher = torch.randn(20, 10)
    model = build_model("mlp", {"hidden": [8]}, (64,), 10)
    value = consensus_term(x, teacher, 2.0, 3.0, seed=5)(model, torch.arange(6))
    j = torch.randint(20, (6,), generator=torch.Generator().manual_seed(5))
    assert float(value.detach()) == pytest.approx(3.0 * float(kd_loss(model(x[j]), teacher[j], 2.0).detach()), rel=1e-5)

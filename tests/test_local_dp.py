"""Local DP-SGD: per-example clipping, noise scale, accounting, refusals, restarts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import digits_config

from actors.participant import private_state
from actors.participant.participant import Participant
from actors.spec.data import DatasetSpec, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.spec.training import DPSGD, ModelSpec, TrainSpec
from actors.training import local_dp
from actors.training.local_dp import check_supported, train_dp_sgd
from actors.training.loops import train_locally
from actors.training.models import build_model
from actors.training.params import get_flat, layout_of, set_flat
from orchestrator.config import ConfigError, load_config
from strategies.privacy import PrivacyAccountant
from strategies.types import GlobalState, Instructions


def data(n: int, features: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def dp_train(noise: float, clip: float, lr: float = 0.1, batch: int = 16, **kw) -> TrainSpec:
    return TrainSpec(batch_size=batch, lr=lr, dp_sgd=DPSGD(noise_multiplier=noise, max_grad_norm=clip), **kw)


def run_dp(model, x, y, spec, epochs=1, steps=None, seed=0, mu=0.0, accountant=None):
    """One DP-SGD task from the model's current weights; returns (delta, metrics)."""
    start = get_flat(model)
    accountant = accountant or PrivacyAccountant(spec.dp_sgd.noise_multiplier, spec.dp_sgd.delta)
    metrics = train_dp_sgd(model, x, y, spec, accountant, epochs=epochs, steps=steps, proximal_mu=mu,
                           generator=torch.Generator().manual_seed(seed))
    return get_flat(model) - start, metrics


def participant_spec(index: int = 0, **overrides) -> ParticipantSpec:
    fields = dict(
        name=f"site-{index}", group="site", index_in_group=index, seed=11,
        model=ModelSpec(name="mlp", hidden=[16]), data=PartitionData(),
        train=dp_train(1.0, 1.0, batch=32), dataset=DatasetSpec(), partition_index=index, num_partitions=4,
    )
    fields.update(overrides)
    return ParticipantSpec(**fields)


def task(p: Participant, task_id: int = 0, seed: int = 5, **kw):
    state = GlobalState(task_id, p.initial_parameters(), p.layout)
    return p.train(state, Instructions(task_id=task_id, seed=seed, **kw))


# -- (a) clipping ---------------------------------------------------------------------------


def test_clipping_bounds_the_update_that_plain_sgd_exceeds():
    x, y = data(200)
    spec = dp_train(noise=0.0, clip=1e-3, lr=0.1, batch=20)
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [32]}, (64,), 10)
    init = get_flat(model)
    delta, metrics = run_dp(model, x, y, spec, epochs=2)
    # SGD without momentum: each step moves lr * (sum of |S_t| clipped gradients) / expected
    # batch, so the whole task moves at most lr * C * (examples sampled) / batch_size
    bound = spec.lr * spec.dp_sgd.max_grad_norm * metrics["samples"] / spec.batch_size
    assert metrics["dp_sgd_steps"] == math.ceil(200 / 20) * 2
    assert 0 < np.linalg.norm(delta) <= bound * (1 + 1e-5)
    plain = build_model("mlp", {"hidden": [32]}, (64,), 10)
    set_flat(plain, init, layout_of(plain))
    train_locally(plain, x, y, TrainSpec(batch_size=20, lr=0.1), seed=0, epochs=2)
    assert np.linalg.norm(get_flat(plain) - init) > 100 * bound


def test_one_example_moves_exactly_lr_times_the_clip_norm():
    """N = batch = 1: the example is always sampled; its gradient is clipped to norm C."""
    x, y = data(1)
    model = build_model("mlp", {"hidden": [32]}, (64,), 10)
    spec = dp_train(noise=0.0, clip=0.01, lr=0.5, batch=1)
    delta, _ = run_dp(model, x, y, spec, steps=1)
    assert np.linalg.norm(delta) == pytest.approx(0.5 * 0.01, rel=1e-4)


# -- (b) noise ------------------------------------------------------------------------------


@pytest.mark.parametrize(("noise", "clip", "batch", "empty"), [
    (1.0, 0.5, 8, True), (2.0, 0.2, 4, True), (1.5, 1.0, 8, False),
])
def test_noise_std_is_lr_times_multiplier_times_clip_over_expected_batch(monkeypatch, noise, clip, batch, empty):
    """Empty Poisson samples take noise-only steps (gradients exactly zero); real ones add
    at most lr * |S| * C / batch of signal, spread over ~133k parameters: negligible."""
    if empty:
        monkeypatch.setattr(local_dp, "poisson_batch", lambda n, rate, gen, device: torch.zeros(0, dtype=torch.long))
    x, y = data(10 * batch)
    model = build_model("mlp", {"hidden": [1024, 64]}, (64,), 10)
    lr = 0.1
    delta, metrics = run_dp(model, x, y, dp_train(noise, clip, lr=lr, batch=batch), steps=1)
    expected = lr * noise * clip / batch
    assert delta.size > 100_000
    assert float(np.std(delta)) == pytest.approx(expected, rel=0.05)
    assert abs(float(np.mean(delta))) < 5 * expected / math.sqrt(delta.size)
    assert (metrics["samples"] == 0) == empty


def test_the_driver_cannot_replay_the_noise_from_the_task_seed():
    a = task(Participant(participant_spec()), seed=5).payload
    b = task(Participant(participant_spec()), seed=5).payload
    assert not np.allclose(a, b)  # same participant, same instructions, fresh secret noise


# -- (c) accounting -------------------------------------------------------------------------


def test_epsilon_grows_with_steps_and_shrinks_with_noise():
    eps = {z: [] for z in (0.8, 1.5)}
    for z in eps:
        acc = PrivacyAccountant(z, 1e-5)
        for _ in range(5):
            acc.step(0.05, steps=20)
            eps[z].append(acc.epsilon())
    for series in eps.values():
        assert all(b > a > 0 for a, b in zip(series, series[1:]))
    assert all(hi < lo for hi, lo in zip(eps[1.5], eps[0.8]))


def test_many_steps_at_once_account_like_one_at_a_time():
    bulk, single = PrivacyAccountant(1.1, 1e-5), PrivacyAccountant(1.1, 1e-5)
    bulk.step(0.1, steps=30)
    for _ in range(30):
        single.step(0.1)
    assert bulk.history == single.history == [(1.1, 0.1, 30)]
    assert bulk.epsilon() == pytest.approx(single.epsilon())


def test_epsilon_is_what_opacus_rdp_accountant_says():
    from opacus.accountants import RDPAccountant

    acc = PrivacyAccountant(0.9, 1e-4)
    for rate, steps in [(0.05, 200), (0.2, 7), (0.05, 40), (1.0, 3)]:
        acc.step(rate, steps=steps)
        reference = RDPAccountant()
        reference.history = list(acc.history)
        assert acc.epsilon() == pytest.approx(reference.get_epsilon(delta=1e-4), rel=1e-12)


def test_a_task_records_as_many_steps_as_plain_training_at_rate_batch_over_n():
    x, y = data(100)
    model = build_model("mlp", {"hidden": [16]}, (64,), 10)
    acc = PrivacyAccountant(1.0, 1e-5)
    _, first = run_dp(model, x, y, dp_train(1.0, 1.0, batch=16), epochs=2, accountant=acc)
    assert acc.history == [(1.0, 0.16, 14)]  # ceil(100 / 16) * 2 steps at q = 16 / 100
    _, second = run_dp(model, x, y, dp_train(1.0, 1.0, batch=16), steps=3, accountant=acc)
    assert acc.history == [(1.0, 0.16, 17)]
    assert 0 < first["dp_sgd_epsilon"] < second["dp_sgd_epsilon"] == acc.epsilon()


def test_empty_poisson_batches_still_step_and_count(monkeypatch):
    sizes = []
    real = local_dp.poisson_batch

    def spy(n, rate, gen, device):
        sizes.append(len(idx := real(n, rate, gen, device)))
        return idx

    monkeypatch.setattr(local_dp, "poisson_batch", spy)
    x, y = data(50)
    model = build_model("mlp", {"hidden": [16]}, (64,), 10)
    acc = PrivacyAccountant(1.0, 1e-5)
    delta, metrics = run_dp(model, x, y, dp_train(1.0, 1.0, batch=1), steps=30, accountant=acc)
    # q = 1/50: P(empty) = (49/50)^50, about a third of the steps; every one still counts
    assert sizes.count(0) >= 3 and len(sizes) == acc.steps == 30
    assert metrics["samples"] == sum(sizes)
    assert np.isfinite(delta).all() and np.abs(delta).sum() > 0


def test_fedprox_term_still_pulls_towards_the_global_model():
    x, y = data(100)
    spec = dp_train(0.0, 1.0, lr=0.2, batch=10)
    deltas = []
    for mu in (0.0, 5.0):
        torch.manual_seed(1)
        model = build_model("mlp", {"hidden": [16]}, (64,), 10)
        deltas.append(run_dp(model, x, y, spec, epochs=3, mu=mu)[0])
    assert 0 < np.linalg.norm(deltas[1]) < 0.8 * np.linalg.norm(deltas[0])


# -- the participant ------------------------------------------------------------------------


def test_participant_reports_epsilon_and_keeps_its_model_unwrapped():
    p = Participant(participant_spec())
    p.describe()
    names = [n for n, _ in p.local.model.named_parameters()]
    first, second = task(p, 0).metrics, task(p, 1).metrics
    assert 0 < first["dp_sgd_epsilon"] < second["dp_sgd_epsilon"]
    model = p.local.model
    assert [n for n, _ in model.named_parameters()] == names and layout_of(model) == p.layout
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert not any(hasattr(q, "grad_sample") or hasattr(q, "summed_grad") for q in model.parameters())


def test_participant_refuses_strategies_dp_sgd_does_not_protect():
    p = Participant(participant_spec(strategy="fedsgd"))  # sends a raw gradient
    with pytest.raises(ValueError, match=r"site-0.*dp_sgd.*'fedsgd'"):
        p.describe()


# -- (d) unsupported models -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "module"), [
    ("gru", r"body\.rnn \(GRU\)"), ("lstm", r"body\.rnn \(LSTM\)"),
    ("transformer", r"self_attn \(MultiheadAttention\)"),
])
def test_unsupported_models_are_named_with_their_modules(name, module):
    with pytest.raises(ValueError, match=rf"participant site-3: model '{name}' cannot train with train\.dp_sgd.*{module}"):
        check_supported(build_model(name, {}, (8, 8), 10), "site-3", name)


def test_participant_refuses_a_gru_at_start_up_and_accepts_mlp_and_cnn():
    with pytest.raises(ValueError, match=r"participant site-0: model 'gru'.*body\.rnn \(GRU\)"):
        Participant(participant_spec(model=ModelSpec(name="gru"), data=PartitionData(view="sequence"))).describe()
    check_supported(build_model("mlp", {}, (64,), 10), "a", "mlp")
    check_supported(build_model("cnn", {}, (1, 8, 8), 10), "a", "cnn")


# -- (e) restarts -----------------------------------------------------------------------------


def test_a_restarted_participant_keeps_counting_its_budget(tmp_path):
    spec = participant_spec(state_dir=str(tmp_path / "site-0"))
    before = Participant(spec)
    eps = [task(before, t).metrics["dp_sgd_epsilon"] for t in range(2)]
    restarted = Participant(spec)
    assert restarted.local.dp_accountant.history == before.local.dp_accountant.history != []
    after = task(restarted, 2).metrics["dp_sgd_epsilon"]
    assert eps[0] < eps[1] < after
    assert private_state.load(spec.state_dir).dp_sgd_history == restarted.local.dp_accountant.history
    fresh = task(Participant(participant_spec()), 0).metrics["dp_sgd_epsilon"]
    assert fresh == pytest.approx(eps[0]) and fresh < after


def test_state_saved_before_dp_sgd_existed_loads_with_an_empty_history(tmp_path):
    old = private_state.PrivateState(tasks_done=3)
    del old.dp_sgd_history  # what unpickling a file from before the field existed gives
    private_state.save(str(tmp_path), old)
    p = Participant(participant_spec(state_dir=str(tmp_path)))
    assert p.local.dp_accountant.history == [] and p.private.tasks_done == 3
    task(p)
    assert private_state.load(str(tmp_path)).dp_sgd_history == p.local.dp_accountant.history != []


# -- budget -----------------------------------------------------------------------------------


def test_a_silo_refuses_the_task_that_would_overspend_its_budget():
    unlimited = Participant(participant_spec())
    spent = [task(unlimited, t).metrics["dp_sgd_epsilon"] for t in range(4)]
    cap = (spent[1] + spent[2]) / 2  # room for two tasks, not three
    capped = Participant(participant_spec(train=TrainSpec(batch_size=32, dp_sgd=DPSGD(
        noise_multiplier=1.0, max_grad_norm=1.0, max_epsilon=cap))))
    eps = [task(capped, t).metrics["dp_sgd_epsilon"] for t in range(2)]
    assert eps == pytest.approx(spent[:2])
    before = list(capped.local.dp_accountant.history)
    with pytest.raises(local_dp.PrivacyBudgetSpent, match=r"participant site-0: privacy budget spent .* > max_epsilon"):
        task(capped, 2)
    assert capped.local.dp_accountant.history == before  # refused before training: nothing more spent
    assert capped.local.dp_accountant.epsilon() <= cap


def test_silos_that_spent_their_budget_leave_the_run(ray_session):
    from orchestrator.loop.run import Orchestrator

    raw = with_dp_sgd({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "max_epsilon": 5.0},  # ~3 tasks
                      stop={"max_aggregations": 50}, schedule={"min_participants": 1})
    orch = Orchestrator(load_config(raw))
    history = orch.run()
    lost = history[history.event == "participant_lost"]
    assert len(lost) == 4 and lost.detail.str.contains("privacy budget spent").all()
    assert orch.summary["stop_reason"].startswith("only 0 participants left")
    updates = history[history.event == "update"]
    assert len(updates) >= 8 and (updates.epsilon <= 5.0).all()
    assert orch.summary["dp_sgd_epsilon_max"] <= 5.0
    assert orch.summary["num_aggregations"] < 50


# -- config -----------------------------------------------------------------------------------


def with_dp_sgd(dp: dict, hosting: str = "pool", **overrides) -> dict:
    raw = digits_config(hosting, **overrides)
    raw["groups"][0]["train"] = {**raw["groups"][0]["train"], "dp_sgd": dp}
    return raw


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"groups\[0\]\.train\.dp_sgd\.noise_multiplier"):
        load_config(with_dp_sgd({"noise_multiplier": -1, "max_grad_norm": 1.0}))
    with pytest.raises(ConfigError, match=r"groups\[0\]\.train\.dp_sgd\.max_grad_norm: required"):
        load_config(with_dp_sgd({"noise_multiplier": 1.0}))


@pytest.mark.parametrize("strategy", [{"name": "fedsgd"}, {"name": "fedper"}])
def test_config_refuses_payloads_dp_sgd_cannot_protect(strategy):
    with pytest.raises(ConfigError, match=rf"groups\[0\]\.train\.dp_sgd is not supported with strategy '{strategy['name']}'"):
        load_config(with_dp_sgd({"noise_multiplier": 1.0, "max_grad_norm": 1.0}, strategy=strategy))


def test_config_accepts_dp_sgd_with_fedprox():
    config = load_config(with_dp_sgd({"noise_multiplier": 1.0, "max_grad_norm": 1.0}, strategy={"name": "fedprox"}))
    assert config.groups[0].train.dp_sgd == DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)


# -- on Ray -----------------------------------------------------------------------------------


def test_dp_sgd_run_records_epsilon_per_update_and_the_worst_in_the_summary(ray_session):
    from orchestrator.loop.run import Orchestrator

    raw = digits_config(stop={"max_aggregations": 3})
    private = raw["groups"][0]
    private.update(count=2, train={**private["train"], "dp_sgd": {
        "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-4}})
    raw["groups"].append({**private, "name": "plain", "count": 1,
                          "train": {k: v for k, v in private["train"].items() if k != "dp_sgd"}})
    orch = Orchestrator(load_config(raw))
    history = orch.run()
    updates = history[history.event == "update"]
    dp_rows, plain_rows = updates[updates.group == "site"], updates[updates.group == "plain"]
    assert len(dp_rows) == 6 and dp_rows.epsilon.notna().all() and (dp_rows.epsilon > 0).all()
    assert plain_rows.epsilon.isna().all()
    last = {}
    for name, rows in dp_rows.groupby("participant"):
        eps = rows.sort_values("version").epsilon.tolist()
        assert all(b > a for a, b in zip(eps, eps[1:])), (name, eps)
        last[name] = eps[-1]
    assert orch.summary["dp_sgd_epsilon_max"] == pytest.approx(max(last.values()))
    assert orch.summary["dp_sgd_delta"] == 1e-4


def test_dp_sgd_participants_always_get_a_private_state_dir_so_restarts_keep_the_budget():
    from orchestrator.cluster.specs import participant_specs

    raw = with_dp_sgd({"noise_multiplier": 1.0, "max_grad_norm": 1.0}, hosting="dedicated")
    raw["groups"].append({**raw["groups"][0], "name": "plain", "count": 1,
                          "train": {k: v for k, v in raw["groups"][0]["train"].items() if k != "dp_sgd"}})
    dirs = {spec.group: spec.state_dir for spec, _ in participant_specs(load_config(raw), "run")}
    assert dirs["plain"] is None  # checkpoints are off: nothing to keep
    assert dirs["site"] is not None and "site-" in dirs["site"]

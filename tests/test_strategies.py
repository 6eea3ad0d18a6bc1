"""Numbers in, numbers out: every strategy against a hand or plain-numpy reference (no Ray)."""

from __future__ import annotations

import dataclasses
import re
import sys

import numpy as np
import pytest
import torch

from actors.spec.training import TrainSpec
from actors.training.loops import train_locally
from strategies import STRATEGIES, get_strategy_class
from strategies.base import BLOCK, weighted_mean, weighted_sum
from strategies.fedavg import FedAvg, FedAvgParams
from strategies.fedavgm import FedAvgM, FedAvgMParams
from strategies.fedopt import FedAdagrad, FedAdam, FedOptParams, FedYogi
from strategies.fedprox import FedProx, FedProxParams
from strategies.fedsgd import FedSGD, FedSGDParams
from strategies.hygiene import clip_to_norm, rejection_reason
from strategies.types import GlobalState, Layout, Update

SIZE = 6


def make_updates(payloads, counts=None, weights=None, kind="delta"):
    payloads = [np.asarray(p, dtype=np.float32) for p in payloads]
    layout = Layout(("w",), ((payloads[0].size,),))
    counts = counts or [1] * len(payloads)
    weights = weights or [1.0] * len(payloads)
    return [
        Update(f"p{i}", 0, kind, p, layout, n, weight=w)
        for i, (p, n, w) in enumerate(zip(payloads, counts, weights))
    ]


@pytest.fixture
def three():
    """Three participants' payloads and example counts, and a starting model."""
    rng = np.random.default_rng(0)
    payloads = rng.normal(size=(2, 3, SIZE)).astype(np.float32)  # two rounds x 3 participants
    return payloads, [10, 20, 70], rng.normal(size=SIZE).astype(np.float32)


def ref_mean(payloads, counts):
    counts = np.asarray(counts, np.float64)
    return (counts[:, None] * np.asarray(payloads, np.float64)).sum(0) / counts.sum()


# -- registry and config --------------------------------------------------------------


def test_registry_knows_every_family():
    assert set(WEIGHT_FAMILY) <= set(STRATEGIES)
    assert get_strategy_class("FedAdam") is FedAdam
    with pytest.raises(KeyError, match="unknown strategy 'fedmagic'.*fedadam"):
        get_strategy_class("fedmagic")


def test_config_builds_strategies_with_their_params():
    from orchestrator.config import StrategyConfig

    built = StrategyConfig(name="fedyogi", eta=0.5, tau=0.01).build()
    assert isinstance(built, FedYogi) and built.params == FedOptParams(eta=0.5, tau=0.01)
    with pytest.raises(ValueError, match="fedsgd.*no option.*'mu'"):
        StrategyConfig(name="fedsgd", mu=0.1)


WEIGHT_FAMILY = ["fedavg", "fedsgd", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad",
                 "median", "trimmed_mean", "krum", "multikrum"]


CITATION_YEAR = re.compile(r"\b(19|20)\d{2}\b")
"""A paper's year: four digits, 19xx or 20xx, standing alone (not "2" of "L2", not "200")."""


def ready_to_aggregate(cls):
    """An instance that can aggregate plain numbers, after the one-time setup the driver
    gives every strategy (here with a one-tensor global layout)."""
    from strategies.base import ServerContext

    strategy = cls()
    strategy.setup(ServerContext(layout=Layout(("w",), ((SIZE,),)), num_participants=3))
    return strategy


@pytest.mark.parametrize("name", sorted(STRATEGIES))  # every registered strategy, new ones too
def test_every_param_is_documented_and_empty_batches_are_refused(name):
    cls = STRATEGIES[name]
    module_doc = sys.modules[cls.__module__].__doc__ or ""
    assert cls.__doc__ and cls.Params.__doc__
    # cites a paper with its year, in the class or its module
    assert CITATION_YEAR.search(cls.__doc__ + module_doc), name
    for field in dataclasses.fields(cls.Params):
        assert field.name in cls.Params.__doc__, (name, field.name)
    with pytest.raises(ValueError, match="cannot aggregate an empty batch of updates"):
        ready_to_aggregate(cls).aggregate(np.zeros(SIZE, np.float32), [])


# -- the weighted mean every delta strategy builds on ----------------------------------


def test_weighted_sum_matches_numpy_across_block_boundaries():
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(5, BLOCK * 2 + 17)).astype(np.float32)
    coef = rng.uniform(size=5)
    np.testing.assert_allclose(weighted_sum(list(stack), coef), coef @ stack.astype(np.float64), rtol=1e-5, atol=1e-5)


def test_weighted_mean_discounts_by_schedule_weight_without_renormalising():
    ups = make_updates([[2.0], [4.0]], counts=[1, 3], weights=[1.0, 0.5])
    # (1*1*2 + 3*0.5*4) / (1 + 3), not divided by the discounted total
    assert weighted_mean(ups).tolist() == [2.0]


# -- FedAvg ------------------------------------------------------------------------------


def test_fedavg_with_one_participant_returns_its_weights():
    global_params = np.array([0.5, -1.0, 2.0], np.float32)
    local = np.array([1.5, 0.0, -3.0], np.float32)
    out = FedAvg().aggregate(global_params, make_updates([local - global_params], counts=[42]))
    np.testing.assert_array_equal(out, local)


def test_fedavg_is_the_example_weighted_average_scaled_by_server_lr(three):
    payloads, counts, x = three
    out = FedAvg(FedAvgParams(server_lr=0.5)).aggregate(x, make_updates(payloads[0], counts))
    np.testing.assert_allclose(out, x + 0.5 * ref_mean(payloads[0], counts), rtol=1e-6)


# -- FedSGD ------------------------------------------------------------------------------


def test_fedsgd_asks_for_gradients():
    assert FedSGD.payload == "gradient"


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_fedsgd_two_steps_match_a_numpy_reference(three, optimizer):
    grads, counts, x = three
    p = FedSGDParams(optimizer=optimizer, lr=0.1, momentum=0.8, beta1=0.9, beta2=0.99, eps=1e-8)
    strategy = FedSGD(p)
    ref = x.astype(np.float64)
    v = m = s = np.zeros(SIZE)
    out = x
    for t in (1, 2):
        g = ref_mean(grads[t - 1], counts)
        if optimizer == "sgd":
            ref = ref - p.lr * g
        elif optimizer == "momentum":
            v = p.momentum * v + g
            ref = ref - p.lr * v
        else:
            m = p.beta1 * m + (1 - p.beta1) * g
            s = p.beta2 * s + (1 - p.beta2) * g * g
            ref = ref - p.lr * (m / (1 - p.beta1**t)) / (np.sqrt(s / (1 - p.beta2**t)) + p.eps)
        out = strategy.aggregate(out, make_updates(grads[t - 1], counts, kind="gradient"))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


# -- FedAvgM and FedProx -----------------------------------------------------------------


def test_fedavgm_by_hand():
    s = FedAvgM(FedAvgMParams(server_lr=0.5, momentum=0.9))
    x = np.zeros(1, np.float32)
    x = s.aggregate(x, make_updates([[2.0]]))  # v = 2, x = 1
    x = s.aggregate(x, make_updates([[-1.0]]))  # v = 0.9 * 2 - 1 = 0.8, x = 1 + 0.4
    np.testing.assert_allclose(x, [1.4], rtol=1e-6)


def test_fedprox_sends_mu_and_averages_like_fedavg(three):
    payloads, counts, x = three
    s = FedProx(FedProxParams(mu=0.3))
    state = GlobalState(0, x, Layout(("w",), ((x.size,),)))
    (term,) = s.client().terms(state)  # the client half anchors mu at the global model
    assert term.mu == 0.3 and np.array_equal(term.anchor, x)
    np.testing.assert_array_equal(
        s.aggregate(x, make_updates(payloads[0], counts)),
        FedAvg().aggregate(x, make_updates(payloads[0], counts)),
    )


def test_proximal_term_keeps_the_local_model_near_the_global_one():
    """The participant side of FedProx, in plain torch: a large mu shrinks the delta."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, generator=gen), torch.randint(0, 3, (64,), generator=gen)

    def delta_norm(mu: float) -> float:
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 3)
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
        train_locally(model, x, y, TrainSpec(lr=0.1, batch_size=8), seed=0, epochs=3, proximal=(mu, anchor))
        return float((torch.cat([p.detach().flatten() for p in model.parameters()]) - start).norm())

    assert delta_norm(5.0) < 0.5 * delta_norm(0.0)


# -- FedAdam / FedYogi / FedAdagrad ------------------------------------------------------


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_fedopt_two_steps_on_three_participants_match_the_paper(three, cls):
    payloads, counts, x = three
    p = FedOptParams(eta=0.1, beta1=0.9, beta2=0.99, tau=1e-2)
    strategy = cls(p)
    ref = x.astype(np.float64)
    m, v = np.zeros(SIZE), np.full(SIZE, p.tau**2)
    out = x
    for t in (0, 1):
        d = ref_mean(payloads[t], counts)
        m = p.beta1 * m + (1 - p.beta1) * d
        if cls is FedAdam:
            v = p.beta2 * v + (1 - p.beta2) * d * d
        elif cls is FedYogi:
            v = v - (1 - p.beta2) * d * d * np.sign(v - d * d)
        else:
            v = v + d * d
        ref = ref + p.eta * m / (np.sqrt(v) + p.tau)
        out = strategy.aggregate(out, make_updates(payloads[t], counts))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_fedadam_first_step_by_hand():
    # d = 1: m = 0.1, v = 0.99 * 0 + 0.01 (tau = 0), step = eta * 0.1 / 0.1 = eta
    s = FedAdam(FedOptParams(eta=0.5, beta1=0.9, beta2=0.99, tau=0.0))
    np.testing.assert_allclose(s.aggregate(np.zeros(1, np.float32), make_updates([[1.0]])), [0.5])


# -- state round-trips through a checkpoint ----------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: FedSGD(FedSGDParams(optimizer="adam", lr=0.05)),
        lambda: FedSGD(FedSGDParams(optimizer="momentum")),
        lambda: FedAvgM(),
        lambda: FedAdam(),
        lambda: FedYogi(),
        lambda: FedAdagrad(),
    ],
    ids=["fedsgd-adam", "fedsgd-momentum", "fedavgm", "fedadam", "fedyogi", "fedadagrad"],
)
def test_state_saved_after_step_one_restores_step_two_exactly(three, make):
    payloads, counts, x = three
    first = make()
    x1 = first.aggregate(x, make_updates(payloads[0], counts))
    saved = first.state_dict()
    assert saved, "a stateful strategy must have state after one step"
    restored = make()
    restored.load_state_dict(saved)
    np.testing.assert_array_equal(
        restored.aggregate(x1, make_updates(payloads[1], counts)),
        first.aggregate(x1, make_updates(payloads[1], counts)),
    )
    fresh = make().aggregate(x1, make_updates(payloads[1], counts))
    assert not np.array_equal(fresh, restored.aggregate(x1, make_updates(payloads[1], counts)))


# -- every strategy honours the schedule's weight ----------------------------------------


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedprox", "median", "trimmed_mean", "krum", "multikrum"])
def test_a_discounted_update_moves_the_model_proportionally_less(name):
    cls = get_strategy_class(name)
    delta = np.arange(1.0, SIZE + 1, dtype=np.float32)
    x = np.ones(SIZE, np.float32)
    full = cls().aggregate(x, make_updates([delta], weights=[1.0])) - x
    discounted = cls().aggregate(x, make_updates([delta], weights=[0.25])) - x
    np.testing.assert_allclose(full, delta, rtol=1e-6)
    np.testing.assert_allclose(discounted, 0.25 * delta, rtol=1e-6)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedsgd"])
def test_adaptive_strategies_see_the_discount_too(name):
    cls = get_strategy_class(name)
    kind = cls.payload
    x = np.zeros(SIZE, np.float32)
    delta = np.linspace(-1, 1, SIZE).astype(np.float32)
    full = cls().aggregate(x, make_updates([delta], weights=[1.0], kind=kind)) - x
    discounted = cls().aggregate(x, make_updates([delta], weights=[0.1], kind=kind)) - x
    # a smaller step the same way: adaptive denominators make it less than proportional
    assert (np.sign(discounted) == np.sign(full)).all() and (full != 0).all()
    assert (np.abs(discounted) < np.abs(full)).all()
    assert np.linalg.norm(discounted) < 0.99 * np.linalg.norm(full)


# -- hygiene -----------------------------------------------------------------------------


def test_hygiene_rejects_non_finite_and_misshapen_updates_with_a_reason():
    layout = Layout(("w", "b"), ((2, 2), (2,)))
    ok = Update("a", 0, "delta", np.zeros(6, np.float32), layout, 5)
    assert rejection_reason(ok, layout) is None
    nan = Update("a", 0, "delta", np.array([0, np.nan, 0, np.inf, 0, 0], np.float32), layout, 5)
    assert rejection_reason(nan, layout) == "payload has 2 non-finite values"
    short = Update("a", 0, "delta", np.zeros(5, np.float32), layout, 5)
    assert "5 values" in rejection_reason(short, layout)
    other = Layout(("w", "c"), ((2, 2), (2,)))
    wrong = Update("a", 0, "delta", np.zeros(6, np.float32), other, 5)
    assert "layout does not match" in rejection_reason(wrong, layout) and "'c'" in rejection_reason(wrong, layout)
    f64 = Update("a", 0, "delta", np.zeros(6), layout, 5)
    assert "float32" in rejection_reason(f64, layout)


def test_clipping_scales_only_updates_above_the_norm():
    big = make_updates([[3.0, 4.0]])[0]
    assert clip_to_norm(big, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(big.payload, [0.6, 0.8], rtol=1e-6)
    small = make_updates([[0.3, 0.4]])[0]
    clip_to_norm(small, 1.0)
    np.testing.assert_allclose(small.payload, [0.3, 0.4])


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("fedadam", {"beta1": 1.0}, "beta1 and beta2 must be in"),
        ("fedyogi", {"eta": 0}, "eta > 0"),
        ("fedavgm", {"momentum": 1.5}, "momentum must be in"),
        ("fedsgd", {"lr": -1}, "lr must be > 0"),
        ("fedprox", {"mu": -0.1}, "mu must be >= 0"),
    ],
)
def test_bad_hyperparameters_are_named_in_the_config_error(name, options, message):
    from orchestrator.config import StrategyConfig

    with pytest.raises(ValueError, match=f"strategy '{name}' option.*{message}"):
        StrategyConfig(name=name, **options)

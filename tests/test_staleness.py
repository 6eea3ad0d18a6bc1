"""Staleness functions and the FedBuff / FedAsync mixing math, by hand, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.fedavg import FedAvg, FedAvgParams
from strategies.staleness import StalenessFunction
from strategies.types import Layout, Update

LAYOUT = Layout(("w",), ((2,),))


def update(payload, n: int, weight: float = 1.0, staleness: int = 0) -> Update:
    u = Update("p", 0, "delta", np.asarray(payload, np.float32), LAYOUT, n)
    u.weight, u.staleness = weight, staleness
    return u


@pytest.mark.parametrize(
    ("kind", "a", "b", "staleness", "expected"),
    [
        ("constant", 0.5, 4, 0, 1.0),
        ("constant", 0.5, 4, 17, 1.0),
        ("polynomial", 0.5, 4, 0, 1.0),
        ("polynomial", 0.5, 4, 3, 0.5),  # 1 / sqrt(4)
        ("polynomial", 1.0, 4, 4, 0.2),  # 1 / 5
        ("polynomial", 2.0, 4, 1, 0.25),  # 1 / 2**2
        ("polynomial", 0.0, 4, 9, 1.0),  # a = 0 switches the discount off
        ("hinge", 1.0, 2, 0, 1.0),
        ("hinge", 1.0, 2, 2, 1.0),  # still inside the hinge
        ("hinge", 1.0, 2, 4, 1 / 3),  # 1 / (1 * (4 - 2) + 1)
        ("hinge", 0.5, 4, 10, 0.25),  # 1 / (0.5 * 6 + 1)
    ],
)
def test_staleness_values_by_hand(kind, a, b, staleness, expected):
    assert StalenessFunction(kind, a=a, b=b)(staleness) == pytest.approx(expected)


def test_staleness_is_vectorised_and_clips_negative_staleness():
    fn = StalenessFunction("polynomial", a=1.0)
    out = fn(np.array([-2, 0, 1, 3]))
    np.testing.assert_allclose(out, [1.0, 1.0, 0.5, 0.25])
    assert isinstance(fn(3), float)


@pytest.mark.parametrize("kind", ["polynomial", "hinge"])
def test_staleness_never_increases_with_age(kind):
    values = StalenessFunction(kind, a=0.7, b=3)(np.arange(50))
    assert values[0] == 1.0
    assert np.all(np.diff(values) <= 0) and np.all(values > 0)


def test_fedbuff_is_an_unnormalised_staleness_weighted_mean():
    # Two buffered deltas: fresh (s=0, weight 1) and stale (s=3, polynomial a=0.5 -> 0.5).
    s = StalenessFunction("polynomial", a=0.5)
    fresh = update([1.0, 0.0], n=1, weight=s(0))
    stale = update([0.0, 4.0], n=3, weight=s(3))
    x = np.array([10.0, 10.0], np.float32)

    out = FedAvg().aggregate(x, [fresh, stale])

    # (1 * 1 * [1, 0] + 3 * 0.5 * [0, 4]) / (1 + 3): the discount is not renormalised away.
    np.testing.assert_allclose(out, [10.25, 11.5], rtol=1e-6)


def test_fedbuff_server_learning_rate_scales_the_step():
    ups = [update([2.0, 0.0], n=1), update([0.0, 2.0], n=1)]
    out = FedAvg(FedAvgParams(server_lr=0.5)).aggregate(np.zeros(2, np.float32), ups)
    np.testing.assert_allclose(out, [0.5, 0.5])


def test_fedasync_mixes_one_delta_by_alpha_times_staleness_factor():
    # FedAsync in delta form: x <- x + alpha * s(staleness) * delta.
    alpha, s = 0.6, StalenessFunction("hinge", a=1.0, b=1)
    delta = update([1.0, -2.0], n=57, weight=alpha * s(3), staleness=3)  # s(3) = 1/3
    x = np.array([1.0, 1.0], np.float32)

    out = FedAvg().aggregate(x, [delta])

    np.testing.assert_allclose(out, [1.2, 0.6], rtol=1e-6)  # 1 + 0.2 * [1, -2]
    assert out.dtype == np.float32


def test_fresh_sync_updates_are_plain_fedavg():
    ups = [update([1.0, 0.0], n=1), update([0.0, 3.0], n=3)]
    out = FedAvg().aggregate(np.zeros(2, np.float32), ups)
    np.testing.assert_allclose(out, [0.25, 2.25])

"""FedAvg and update hygiene on plain numbers: no Ray, no torch."""

from __future__ import annotations

import re

import numpy as np
import pytest

from strategies import get_strategy_class
from strategies.base import weighted_mean
from strategies.fedavg import FedAvg, FedAvgParams
from strategies.hygiene import clip_to_norm, rejection_reason
from strategies.types import Layout, Update

LAYOUT = Layout(("w", "b"), ((2, 2), (2,)))


def update(payload, examples=1, weight=1.0, name="p", layout=LAYOUT) -> Update:
    u = Update(name, 0, "delta", np.asarray(payload, dtype=np.float32), layout, examples)
    u.weight = weight
    return u


def test_fedavg_weights_by_example_count():
    g = np.arange(6, dtype=np.float32)
    ups = [update([1, 0, 0, 0, 0, 2], examples=10), update([0, 0, 4, 0, 0, -1], examples=30)]
    out = FedAvg().aggregate(g, ups)
    expected = g + (10 * ups[0].payload + 30 * ups[1].payload) / 40
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.tolist() == pytest.approx([0.25, 1, 5, 3, 4, 4.75])
    assert out.dtype == np.float32


def test_fedavg_of_deltas_is_the_weighted_average_of_local_models():
    rng = np.random.default_rng(0)
    g = rng.normal(size=6).astype(np.float32)
    local = [rng.normal(size=6).astype(np.float32) for _ in range(3)]
    counts = [5, 1, 14]
    out = FedAvg().aggregate(g, [update(m - g, n) for m, n in zip(local, counts)])
    np.testing.assert_allclose(out, np.average(local, axis=0, weights=counts), atol=1e-6)


def test_one_participant_gets_its_own_model_back():
    g = np.array([1, 2, 3, 4, 5, 6], np.float32)
    mine = np.array([0.5, -1, 7, 4, 2, 0], np.float32)
    out = FedAvg().aggregate(g, [update(mine - g, examples=17)])
    np.testing.assert_allclose(out, mine, atol=1e-6)


def test_server_lr_scales_the_step():
    g = np.ones(6, np.float32)
    ups = [update([2, 2, 2, 2, 2, 2], 1), update([0, 0, 0, 0, 0, 4], 1)]
    plain = FedAvg().aggregate(g, ups) - g
    half = FedAvg(FedAvgParams(server_lr=0.5)).aggregate(g, ups) - g
    np.testing.assert_allclose(half, 0.5 * plain, rtol=1e-6)
    np.testing.assert_allclose(plain, [1, 1, 1, 1, 1, 3])


def test_staleness_weight_shrinks_a_contribution_without_renormalising():
    g = np.zeros(6, np.float32)
    fresh = update([1, 1, 1, 1, 1, 1], examples=1, weight=1.0)
    stale = update([3, 3, 3, 3, 3, 3], examples=1, weight=0.5)
    out = FedAvg().aggregate(g, [fresh, stale])
    # (1 * 1 * 1 + 1 * 0.5 * 3) / (1 + 1): the stale update pulls less, sum not rescaled
    np.testing.assert_allclose(out, np.full(6, 1.25), rtol=1e-6)
    solo = FedAvg().aggregate(g, [update([4] * 6, examples=3, weight=0.25)])
    np.testing.assert_allclose(solo, np.ones(6), rtol=1e-6)


def test_aggregate_leaves_its_inputs_alone():
    g = np.ones(6, np.float32)
    ups = [update([1] * 6, 2), update([2] * 6, 3)]
    before = [u.payload.copy() for u in ups]
    FedAvg(FedAvgParams(server_lr=2.0)).aggregate(g, ups)
    assert g.tolist() == [1] * 6
    assert all(np.array_equal(u.payload, b) for u, b in zip(ups, before))


def test_zero_examples_everywhere_falls_back_to_a_plain_mean():
    out = weighted_mean([update([2] * 6, 0), update([4] * 6, 0)])
    np.testing.assert_allclose(out, np.full(6, 3.0))


def test_empty_batch_is_an_error():
    with pytest.raises(ValueError, match="empty batch"):
        FedAvg().aggregate(np.zeros(6, np.float32), [])


def test_unknown_strategy_lists_known_ones():
    assert get_strategy_class("FedAvg") is FedAvg
    with pytest.raises(KeyError, match="unknown strategy 'fedfoo'; known strategies: .*fedavg"):
        get_strategy_class("fedfoo")


# -- hygiene ---------------------------------------------------------------------------


def test_a_good_update_passes():
    assert rejection_reason(update(np.zeros(6)), LAYOUT) is None


@pytest.mark.parametrize(
    "bad, reason",
    [
        (update([0, np.nan, 0, 0, 0, 0]), "1 non-finite values"),
        (update([np.inf, -np.inf, 0, 0, np.nan, 0]), "3 non-finite values"),
        (update(np.zeros(5)), "payload has 5 values but its layout describes 6"),
        (update(np.zeros(6), layout=Layout(("w", "c"), ((2, 2), (2,)))),
         r"layout does not match the global model \(differs in \['b', 'c'\]\)"),
        (update(np.zeros(6), layout=Layout(("w", "b"), ((1, 4), (2,)))), r"\(shapes differ\)"),
        (update(np.zeros((2, 3))), "1-D array"),
        (update(np.zeros(6), examples=-1), "negative example count -1"),
    ],
    ids=["nan", "inf", "wrong-length", "wrong-names", "wrong-shapes", "2d", "negative-count"],
)
def test_bad_updates_are_rejected_with_a_reason(bad, reason):
    found = rejection_reason(bad, LAYOUT)
    assert found is not None and re.search(reason, found), found


def test_float64_payload_is_rejected():
    u = update(np.zeros(6))
    u.payload = np.zeros(6, np.float64)
    assert "dtype is float64" in rejection_reason(u, LAYOUT)


def test_clip_to_norm_scales_down_only_large_updates():
    big = update([3, 4, 0, 0, 0, 0])
    assert clip_to_norm(big, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(big.payload, [0.6, 0.8, 0, 0, 0, 0], rtol=1e-6)
    small = update([0.3, 0.4, 0, 0, 0, 0])
    clip_to_norm(small, 1.0)
    np.testing.assert_allclose(small.payload, [0.3, 0.4, 0, 0, 0, 0])

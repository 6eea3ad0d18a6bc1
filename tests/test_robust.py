"""Robust aggregation against plain-numpy (and scipy) references, no Ray."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from strategies.base import BLOCK
from strategies.robust import (
    Krum,
    KrumParams,
    Median,
    MultiKrum,
    MultiKrumParams,
    TrimmedMean,
    TrimmedMeanParams,
    krum_scores,
    trim_count,
)
from strategies.types import Layout, Update


def make_updates(payloads, counts=None, weights=None):
    payloads = [np.asarray(p, dtype=np.float32) for p in payloads]
    layout = Layout(("w",), ((payloads[0].size,),))
    counts = counts or [10] * len(payloads)
    weights = weights or [1.0] * len(payloads)
    return [Update(f"p{i}", 0, "delta", p, layout, n, weight=w)
            for i, (p, n, w) in enumerate(zip(payloads, counts, weights))]


def honest_and_byzantine(n_honest=6, n_bad=2, size=50, seed=0):
    """Honest deltas scattered around a common direction; attackers flip it and scale x10."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=size)
    honest = direction + 0.1 * rng.normal(size=(n_honest, size))
    bad = -10 * honest[:n_bad]
    return honest.astype(np.float32), bad.astype(np.float32)


# -- Median ----------------------------------------------------------------------------


def test_median_ignores_one_wild_update():
    honest = [[1.0, 5.0], [2.0, 6.0], [3.0, 7.0], [4.0, 8.0]]
    wild = [1e9, -1e9]
    out = Median().aggregate(np.zeros(2, np.float32), make_updates([*honest, wild]))
    assert out.tolist() == [3.0, 6.0]  # the median of the five, inside the honest range


def test_median_matches_numpy_over_several_blocks():
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(7, BLOCK + 1000)).astype(np.float32)
    x = rng.normal(size=stack.shape[1]).astype(np.float32)
    np.testing.assert_allclose(Median().aggregate(x, make_updates(stack)), x + np.median(stack, axis=0), rtol=1e-6)


def test_median_gives_an_attacker_claiming_many_examples_no_extra_say():
    updates = make_updates([[1.0], [2.0], [100.0]], counts=[10, 10, 10**9])
    assert Median().aggregate(np.zeros(1, np.float32), updates).tolist() == [2.0]


# -- TrimmedMean -----------------------------------------------------------------------


@pytest.mark.parametrize(("n", "beta", "k"), [(10, 0.2, 2), (8, 0.25, 2), (4, 0.25, 1), (5, 0.1, 0), (3, 0.49, 1), (2, 0.4, 0), (1, 0.3, 0)])
def test_trim_count(n, beta, k):
    assert trim_count(n, beta) == k


def test_trimmed_mean_trims_the_right_count_from_each_end():
    # one coordinate, two extremes at each end: beta = 0.2 of 10 trims exactly 2 per side
    values = [-1000.0, -500.0, 3.0, 4.0, 5.0, 6.0, 7.0, 20.0, 500.0, 1000.0]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(values))  # arrival order must not matter
    out = TrimmedMean(TrimmedMeanParams(beta=0.2)).aggregate(
        np.zeros(1, np.float32), make_updates([[values[i]] for i in order])
    )
    assert out.tolist() == [7.5]  # mean of 3, 4, 5, 6, 7, 20; trimming 1 or 3 gives 5.625 or 5.5


def test_trimmed_mean_matches_scipy_over_several_blocks():
    rng = np.random.default_rng(2)
    stack = rng.standard_cauchy(size=(9, BLOCK + 333)).astype(np.float32)
    out = TrimmedMean(TrimmedMeanParams(beta=0.25)).aggregate(np.zeros(stack.shape[1], np.float32), make_updates(stack))
    # scipy cuts floor(0.25 * 9) = 2 from each end as well
    np.testing.assert_allclose(out, stats.trim_mean(stack.astype(np.float64), 0.25, axis=0), rtol=1e-4, atol=1e-4)


def test_trimmed_mean_with_two_attackers_stays_in_the_honest_range():
    honest, bad = honest_and_byzantine()
    out = TrimmedMean(TrimmedMeanParams(beta=0.25)).aggregate(
        np.zeros(honest.shape[1], np.float32), make_updates([*honest, *bad])
    )
    assert np.all(out >= honest.min(0) - 1e-6) and np.all(out <= honest.max(0) + 1e-6)


# -- Krum / MultiKrum ------------------------------------------------------------------


def test_krum_scores_match_a_brute_force_reference():
    rng = np.random.default_rng(3)
    stack = rng.normal(size=(7, 40)).astype(np.float32)
    f = 2
    ref = []
    for i in range(7):
        dists = sorted(float(np.sum((stack[i].astype(np.float64) - stack[j]) ** 2)) for j in range(7) if j != i)
        ref.append(sum(dists[: 7 - f - 2]))
    np.testing.assert_allclose(krum_scores(list(stack), f), ref, rtol=1e-4)


def test_krum_picks_an_honest_update_and_applies_exactly_it():
    honest, bad = honest_and_byzantine(n_honest=7, n_bad=2)
    updates = make_updates([*bad[:1], *honest, *bad[1:]])  # attackers first and last
    krum = Krum(KrumParams(f=2))
    x = np.ones(honest.shape[1], np.float32)
    out = krum.aggregate(x, updates)
    [chosen] = krum.last_selected
    assert chosen not in ("p0", "p8")
    chosen_delta = next(u.payload for u in updates if u.participant == chosen)
    np.testing.assert_array_equal(out, x + chosen_delta)


def test_multikrum_averages_the_honest_ones_and_leaves_out_the_attackers():
    honest, bad = honest_and_byzantine(n_honest=6, n_bad=2)
    updates = make_updates([*honest, *bad])
    mk = MultiKrum(MultiKrumParams(f=2))  # m defaults to n - f = 6
    out = mk.aggregate(np.zeros(honest.shape[1], np.float32), updates)
    assert sorted(mk.last_selected) == [f"p{i}" for i in range(6)]
    np.testing.assert_allclose(out, honest.mean(0), rtol=1e-5, atol=1e-6)


def test_krum_with_fewer_updates_than_its_guarantee_needs_still_aggregates():
    # async batches can be tiny: n = 2 < 2f + 3, no crash, one of the two is applied
    updates = make_updates([[1.0], [3.0]])
    out = Krum(KrumParams(f=1)).aggregate(np.zeros(1, np.float32), updates)
    assert out.tolist() in ([1.0], [3.0])


def test_robust_params_are_validated():
    with pytest.raises(ValueError, match="beta"):
        TrimmedMeanParams(beta=0.5)
    with pytest.raises(ValueError, match="f must be"):
        KrumParams(f=-1)
    with pytest.raises(ValueError, match="m must be"):
        MultiKrumParams(m=0)

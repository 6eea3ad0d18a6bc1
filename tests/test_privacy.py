"""DP-FedAvg: clipping, noise calibrated to the multiplier, epsilon from the RDP accountant."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import digits_config

from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator
from strategies.privacy import DPParams, PrivacyAccountant, clip_rows, noisy_mean


def test_updates_are_clipped_to_the_norm_and_small_ones_kept():
    rows = clip_rows([np.full(4, 10.0, np.float32), np.array([0.1, 0, 0, 0], np.float32)], 2.0)
    assert np.isclose(np.linalg.norm(rows[0]), 2.0)
    assert rows[1].tolist() == pytest.approx([0.1, 0, 0, 0])


@pytest.mark.parametrize(("multiplier", "clip"), [(0.5, 1.0), (1.3, 0.2)])
def test_noise_scale_matches_the_multiplier(multiplier, clip):
    m, size = 8, 200_000
    params = DPParams(clip_norm=clip, noise_multiplier=multiplier)
    out = noisy_mean([np.zeros(size, np.float32)] * m, params, np.random.default_rng(0))
    measured = float(np.std(out)) * m  # noise is added to the sum, then divided by m
    assert measured == pytest.approx(multiplier * clip, rel=0.02)
    assert abs(float(np.mean(out))) < 4 * multiplier * clip / m / np.sqrt(size)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    low, high = PrivacyAccountant(0.8, 1e-5), PrivacyAccountant(2.0, 1e-5)
    eps_low, eps_high = [], []
    for _ in range(15):
        low.step(sample_rate=0.3)
        high.step(sample_rate=0.3)
        eps_low.append(low.epsilon())
        eps_high.append(high.epsilon())
    assert all(b > a for a, b in zip(eps_low, eps_low[1:]))
    assert all(h < lo for h, lo in zip(eps_high, eps_low))
    assert PrivacyAccountant(0.0, 1e-5).epsilon() == 0.0


def test_dp_run_reports_epsilon_in_history_and_summary(ray_session):
    raw = digits_config(stop={"max_aggregations": 4},
                        privacy={"dp": {"clip_norm": 0.5, "noise_multiplier": 1.0, "delta": 1e-4}})
    orch = Orchestrator(load_config(raw))
    history = orch.run()
    eps = history[history.event == "privacy"].epsilon.tolist()
    assert len(eps) == 4 and all(b > a > 0 for a, b in zip(eps, eps[1:]))
    assert orch.summary["dp_epsilon"] == pytest.approx(eps[-1])
    assert orch.summary["dp_delta"] == 1e-4


def test_plain_dp_applies_staleness_weights_like_secure_dp():
    """Without secure aggregation DP-FedAvg must still scale each clipped delta by its
    schedule weight: under ``async`` with alpha=0.1 the step was 10x too large."""
    from orchestrator.server.privacy import PrivacyHooks
    from strategies.types import Layout, Update

    config = load_config(digits_config(
        schedule={"mode": "async", "alpha": 0.1},
        privacy={"dp": {"clip_norm": 1.0, "noise_multiplier": 0.0}}))
    hooks = PrivacyHooks(config.privacy, config)
    assert not hooks.secure and hooks.dp is not None
    layout = Layout(("w",), ((2,),))
    small = np.array([0.3, 0.4], np.float32)  # norm 0.5: not clipped
    big = np.array([3.0, 4.0], np.float32)  # norm 5: clipped to [0.6, 0.8]
    batch = [Update("a", 0, "delta", small, layout, 10, task_id=1, weight=0.1)]
    (combined,), dropped = hooks.combine(batch, layout, {})
    assert dropped == []
    # the strategy sees one update of weight 1, so its payload must already be w * clip(d)
    assert combined.weight == 1.0
    assert combined.payload.tolist() == pytest.approx((0.1 * small).tolist())
    batch = [Update("a", 0, "delta", small, layout, 10, task_id=2, weight=0.1),
             Update("b", 0, "delta", big, layout, 10, task_id=3, weight=0.5)]
    (combined,), _ = hooks.combine(batch, layout, {})
    expected = (0.1 * small + 0.5 * np.array([0.6, 0.8])) / 2
    assert combined.payload.tolist() == pytest.approx(expected.tolist())


def test_a_weight_above_one_cannot_raise_the_sensitivity_above_the_clip_norm():
    params = DPParams(clip_norm=1.0, noise_multiplier=0.0)
    d = np.array([0.3, 0.4], np.float32)  # norm 0.5: within the bound, 3x that is not
    out = noisy_mean([d], params, np.random.default_rng(0), weights=[3.0])
    assert np.linalg.norm(out) == pytest.approx(1.0)
    assert out.tolist() == pytest.approx([0.6, 0.8])

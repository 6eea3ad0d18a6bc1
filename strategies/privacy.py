"""Participant-level differential privacy: DP-FedAvg's clip-and-noise and its accountant.

McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
Models", ICLR 2018. Each participant's update is clipped to L2 norm ``clip_norm``, so one
participant changes the sum by at most that much; Gaussian noise with standard deviation
``noise_multiplier * clip_norm`` is added to the sum, and the noisy sum is divided by the
number of updates. Updates are weighted equally: weighting by example count would let
one large participant exceed the clipping bound.

The privacy spent is tracked with Opacus' Renyi-DP accountant (Mironov 2017), treating
each aggregation as one subsampled Gaussian mechanism with sampling rate ``cohort size /
participants``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


class PrivacyBudgetSpent(RuntimeError):
    """The participant refused a task: it would take its epsilon past ``max_epsilon``."""


@dataclass(frozen=True)
class DPParams:
    clip_norm: float
    """L2 bound on each participant's update (the sensitivity of the sum)."""
    noise_multiplier: float
    """Noise std on the sum divided by ``clip_norm``; 0 disables noise (no privacy)."""
    delta: float = 1e-5
    """The delta the reported epsilon is for; keep it below 1 / participants."""


def clip_rows(payloads: Sequence[np.ndarray], clip_norm: float) -> np.ndarray:
    """Stack the payloads and scale each row down to L2 norm ``clip_norm`` (vectorised)."""
    stacked = np.stack([np.asarray(p, dtype=np.float32) for p in payloads])
    norms = np.linalg.norm(stacked, axis=1, keepdims=True)
    factors = np.minimum(1.0, clip_norm / np.maximum(norms, 1e-12)).astype(np.float32)
    return stacked * factors


def noisy_mean(
    payloads: Sequence[np.ndarray],
    params: DPParams,
    rng: np.random.Generator,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """DP-FedAvg's aggregate: ``(sum(w_i clip(d_i)) + N(0, (z C)^2 I)) / m``, float32.

    ``weights`` are the schedule's staleness weights (``Update.weight``; 1 if omitted), applied
    after clipping exactly as participants do under secure aggregation, so a stale or
    FedAsync-mixed update moves the model as little with DP as without it. Schedule weights
    are at most 1, so each weighted row still has norm ``<= clip_norm`` and the noise stays
    calibrated; a weighted row above the bound (a weight > 1) is clipped again to keep it so.
    """
    if not payloads:
        raise ValueError("cannot aggregate an empty batch of updates")
    rows = clip_rows(payloads, params.clip_norm)
    if weights is not None:
        w = np.asarray(weights, dtype=np.float32).reshape(-1, 1)
        rows = rows * w
        if float(w.max()) > 1.0:  # keep the sensitivity of the sum at clip_norm
            rows = clip_rows(list(rows), params.clip_norm)
    total = rows.sum(axis=0, dtype=np.float64)
    return ((total + gaussian_noise(total.size, params, rng)) / len(payloads)).astype(np.float32)


def gaussian_noise(size: int, params: DPParams, rng: np.random.Generator) -> np.ndarray:
    """The noise DP-FedAvg adds to a sum of clipped updates."""
    return rng.normal(0.0, params.noise_multiplier * params.clip_norm, size)


@dataclass
class PrivacyAccountant:
    """Epsilon spent so far, from Opacus' RDP accountant.

    >>> acc = PrivacyAccountant(noise_multiplier=1.0, delta=1e-5)
    >>> acc.step(sample_rate=0.5); acc.step(sample_rate=0.5)
    >>> 0 < acc.epsilon() < float("inf")
    True
    """

    noise_multiplier: float
    delta: float
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def step(self, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` mechanisms that each saw a ``sample_rate`` fraction of the data
        (an aggregation of participants, or a DP-SGD step of examples)."""
        rate = float(min(max(sample_rate, 0.0), 1.0))
        if steps <= 0:
            return
        if self.history and self.history[-1][:2] == (self.noise_multiplier, rate):
            z, q, n = self.history[-1]
            self.history[-1] = (z, q, n + steps)
        else:
            self.history.append((self.noise_multiplier, rate, int(steps)))

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.history)

    def epsilon(self) -> float:
        """Epsilon at ``delta`` (infinite without noise; 0 before any step)."""
        if not self.history:
            return 0.0
        if self.noise_multiplier <= 0:
            return float("inf")
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis.rdp import get_privacy_spent

        # what RDPAccountant.get_epsilon computes, with the per-step RDP of each (z, q)
        # cached: RDP composes linearly in steps, and computing it costs ~50 ms
        rdp = sum(n * _rdp_per_step(z, q) for z, q, n in self.history)
        with warnings.catch_warnings():  # "optimal order is the smallest alpha": epsilon is
            warnings.simplefilter("ignore", UserWarning)  # already large; a tighter bound would not help
            eps, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=self.delta)
        return float(eps)


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one subsampled Gaussian step at Opacus' default orders (read-only)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = np.asarray(compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                 orders=RDPAccountant.DEFAULT_ALPHAS), dtype=np.float64)
    rdp.setflags(write=False)
    return rdp

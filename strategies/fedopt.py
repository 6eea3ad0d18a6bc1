"""FedAdam, FedYogi, FedAdagrad: adaptive server optimizers.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2).

Participants run local SGD and send deltas; the server treats the weighted average delta
as a pseudo-gradient ``d`` and takes an adaptive step:
``m = beta1 m + (1 - beta1) d``, ``v`` by the rule of each variant, and
``x += eta * m / (sqrt(v) + tau)``. The three classes differ only in the ``v`` rule (see
``strategies/server_optimizers.py::fedopt_step``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strategies.base import Strategy, weighted_mean
from strategies.server_optimizers import fedopt_step
from strategies.types import Update


@dataclass(frozen=True)
class FedOptParams:
    """Hyperparameters shared by the three variants (names as in the paper).

    ``eta``: server learning rate (the paper tunes it in 10^-3 ... 10^0).
    ``beta1``: first-moment decay. ``beta2``: second-moment decay (unused by Adagrad).
    ``tau``: adaptivity; larger makes the step more like plain server SGD, and ``v``
    starts at ``tau**2``.
    """

    eta: float = 0.01
    """Server learning rate."""
    beta1: float = 0.9
    """First-moment decay."""
    beta2: float = 0.99
    """Second-moment decay (Adam, Yogi)."""
    tau: float = 1e-3
    """Degree of adaptivity; also the denominator guard."""

    def __post_init__(self) -> None:
        if self.eta <= 0 or self.tau < 0:
            raise ValueError(f"need eta > 0 and tau >= 0, got eta={self.eta}, tau={self.tau}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")


class FedOpt(Strategy):
    """Common body; subclasses pick ``rule``. Moments live in ``self.state``."""

    Params = FedOptParams
    rule: ClassVar[str]

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        p = self.params
        step = fedopt_step(self.state, weighted_mean(updates), self.rule, p.eta, p.beta1, p.beta2, p.tau)
        return global_params + step


class FedAdam(FedOpt):
    """``v = beta2 v + (1 - beta2) d^2``."""

    name = "fedadam"
    rule = "adam"


class FedYogi(FedOpt):
    """``v = v - (1 - beta2) d^2 sign(v - d^2)``: ``v`` grows or shrinks additively."""

    name = "fedyogi"
    rule = "yogi"


class FedAdagrad(FedOpt):
    """``v = v + d^2``: the step shrinks as squared pseudo-gradients accumulate."""

    name = "fedadagrad"
    rule = "adagrad"

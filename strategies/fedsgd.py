"""FedSGD: participants send gradients, the server owns the optimizer.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017 (FedSGD is their baseline: one local gradient per round).

Each participant returns the mean-loss gradient on one local batch at the global
parameters (``payload = "gradient"``). The server averages them by example count and
schedule weight, then takes one step of its own optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from strategies.base import Strategy, weighted_mean
from strategies.client import GradientClient
from strategies.server_optimizers import adam_step, momentum_step
from strategies.types import Update


@dataclass(frozen=True)
class FedSGDParams:
    """Hyperparameters of the server optimizer.

    The averaged gradient ``g`` moves the global model by ``optimizer``:
    ``sgd``: ``x -= lr * g``; ``momentum``: ``v = momentum * v + g; x -= lr * v``;
    ``adam``: Adam (Kingma & Ba 2015) with ``beta1``, ``beta2``, ``eps``, bias-corrected.
    """

    optimizer: Literal["sgd", "momentum", "adam"] = "sgd"
    """Which server optimizer applies the averaged gradient."""
    lr: float = 0.1
    """Server learning rate (the participants' own ``train.lr`` is not used)."""
    momentum: float = 0.9
    """Momentum coefficient for ``optimizer: momentum``."""
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.999
    """Adam's second-moment decay."""
    eps: float = 1e-8
    """Adam's denominator guard."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not (0 <= self.momentum < 1 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("momentum, beta1 and beta2 must be in [0, 1)")


class FedSGD(Strategy):
    """Average gradients, apply them with a server optimizer.

    >>> import numpy as np
    >>> from strategies.types import Layout, Update
    >>> lay = Layout(("w",), ((2,),))
    >>> g = [Update("a", 0, "gradient", np.array([1., -2.], np.float32), lay, 1)]
    >>> FedSGD(FedSGDParams(lr=0.5)).aggregate(np.zeros(2, np.float32), g).tolist()
    [-0.5, 1.0]
    """

    name = "fedsgd"
    payload = "gradient"
    Params = FedSGDParams
    Client = GradientClient
    supports_dp_sgd = False  # DP-SGD protects a trained delta, not a raw gradient

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        p = self.params
        grad = weighted_mean(updates)
        if p.optimizer == "adam":
            return global_params + adam_step(self.state, grad, p.lr, p.beta1, p.beta2, p.eps)
        if p.optimizer == "momentum":
            grad = momentum_step(self.state, grad, p.momentum)
        return global_params - np.float32(p.lr) * grad

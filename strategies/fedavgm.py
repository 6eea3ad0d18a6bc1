"""FedAvgM: FedAvg with server momentum.

Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated
Visual Classification", 2019.

The averaged delta is treated as a (negative) pseudo-gradient and fed through heavy-ball
momentum on the server: ``v = momentum * v + avg_delta; x += server_lr * v``. Momentum
smooths the round-to-round swings that label-skewed participants cause.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strategies.base import Strategy, weighted_mean
from strategies.server_optimizers import momentum_step
from strategies.types import Update


@dataclass(frozen=True)
class FedAvgMParams:
    """``server_lr``: step on the momentum buffer (the paper pairs 1.0 with a lower
    ``momentum`` and lowers it as ``momentum`` grows). ``momentum``: the server's beta;
    0 is plain FedAvg."""

    server_lr: float = 1.0
    """Step size on the momentum buffer."""
    momentum: float = 0.9
    """Server momentum beta in [0, 1)."""

    def __post_init__(self) -> None:
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")


class FedAvgM(Strategy):
    """FedAvg plus server momentum; the buffer is in ``self.state["momentum"]``.

    >>> import numpy as np
    >>> from strategies.types import Layout, Update
    >>> lay = Layout(("w",), ((1,),))
    >>> s = FedAvgM(FedAvgMParams(momentum=0.5))
    >>> u = [Update("a", 0, "delta", np.array([1.], np.float32), lay, 1)]
    >>> s.aggregate(np.zeros(1, np.float32), u).tolist(), s.aggregate(np.zeros(1, np.float32), u).tolist()
    ([1.0], [1.5])
    """

    name = "fedavgm"
    Params = FedAvgMParams

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        v = momentum_step(self.state, weighted_mean(updates), self.params.momentum)
        return global_params + np.float32(self.params.server_lr) * v

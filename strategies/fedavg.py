"""FedAvg: example-weighted averaging of local models.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017.

Participants send deltas (local model minus the global model they started from), so the
next global model is ``x + server_lr * sum_i(n_i * w_i * delta_i) / sum_i(n_i)``. With
``server_lr = 1`` and fresh updates (all ``w_i = 1``) that is exactly the weighted average
of the local models; under FedBuff ``w_i`` is the staleness discount.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strategies.base import Strategy, weighted_mean
from strategies.types import Update


@dataclass(frozen=True)
class FedAvgParams:
    server_lr: float = 1.0
    """Step size on the averaged delta; 1.0 is plain FedAvg."""


class FedAvg(Strategy):
    """Example-weighted average of participant deltas.

    >>> import numpy as np
    >>> from strategies.types import Layout, Update
    >>> lay = Layout(("w",), ((2,),))
    >>> ups = [Update("a", 0, "delta", np.array([1., 0.], np.float32), lay, 1),
    ...        Update("b", 0, "delta", np.array([0., 3.], np.float32), lay, 3)]
    >>> FedAvg().aggregate(np.zeros(2, np.float32), ups).tolist()
    [0.25, 2.25]
    """

    name = "fedavg"
    Params = FedAvgParams

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        step = weighted_mean(updates)
        if self.params.server_lr != 1.0:
            step *= np.float32(self.params.server_lr)
        return global_params + step

"""FedProx: FedAvg whose participants add a proximal term to their local loss.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.

The server side is FedAvg's weighted average; what differs is the local objective,
``loss + mu/2 * ||w - w_global||^2``, which keeps each local model near the global one
when data or local work is heterogeneous. The client half below adds that term; the
participant's training loop applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strategies.client import Proximal, Term, WeightsClient
from strategies.fedavg import FedAvg
from strategies.types import GlobalState


@dataclass(frozen=True)
class FedProxParams:
    """``mu``: weight of the proximal term; 0 is FedAvg, the paper tries 0.001 to 1.
    ``server_lr``: step on the averaged delta, as in FedAvg."""

    mu: float = 0.01
    """Proximal coefficient applied in the participants' local loss."""
    server_lr: float = 1.0
    """Step size on the averaged delta."""

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise ValueError(f"mu must be >= 0, got {self.mu}")


class FedProxClient(WeightsClient):
    """Local training with the proximal term anchored at the global model it started from.

    >>> from strategies.types import GlobalState, Layout
    >>> state = GlobalState(0, np.ones(2, np.float32), Layout(("w",), ((2,),)))
    >>> [t.mu for t in FedProxClient(FedProx(FedProxParams(mu=0.1))).terms(state)]
    [0.1]
    """

    def terms(self, state: GlobalState) -> Sequence[Term]:
        if self.params.mu == 0:
            return ()
        return (Proximal(self.params.mu, np.asarray(state.params, dtype=np.float32)),)


class FedProx(FedAvg):
    """FedAvg aggregation; the client half adds ``mu/2 ||w - w_global||^2``."""

    name = "fedprox"
    Params = FedProxParams
    Client = FedProxClient

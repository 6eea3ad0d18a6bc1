"""FedProx: FedAvg whose participants add a proximal term to their local loss.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.

The server side is FedAvg's weighted average; what differs is the local objective,
``loss + mu/2 * ||w - w_global||^2``, which keeps each local model near the global one
when data or local work is heterogeneous. ``mu`` travels with every task through
:meth:`FedProx.task_options` and ``actors/training.py::train_locally`` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strategies.fedavg import FedAvg


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


class FedProx(FedAvg):
    """FedAvg aggregation; ``mu`` goes out with each task.

    >>> FedProx(FedProxParams(mu=0.1)).task_options()
    {'proximal_mu': 0.1}
    """

    name = "fedprox"
    Params = FedProxParams

    def task_options(self) -> dict[str, Any]:
        return {"proximal_mu": float(self.params.mu)}

"""The contract every aggregation strategy follows.

A strategy decides *how* a batch of updates becomes the next global parameters; the
orchestrator's schedule decides *when* that happens. Keeping the two apart lets every
strategy run under synchronous rounds, FedBuff and FedAsync alike.

Each strategy is one small class with a ``Params`` dataclass of hyperparameters (the
config validates YAML against it) and a pure ``aggregate``: numbers in, numbers out, no
Ray. Server-side optimizer state (momentum, Adam moments) lives in ``self.state`` so it
can be checkpointed with :meth:`state_dict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from strategies.types import PayloadKind, Update


@dataclass(frozen=True)
class NoParams:
    """For strategies without hyperparameters."""


class Strategy:
    """Base class: subclasses set ``name``, ``Params`` and implement ``aggregate``."""

    name: ClassVar[str]
    payload: ClassVar[PayloadKind] = "delta"
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.state: dict[str, np.ndarray] = {}

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        """Return the next global parameter vector; must not modify its inputs."""
        raise NotImplementedError

    def task_options(self) -> dict[str, Any]:
        """Extra instructions every participant gets with a task (FedProx's ``mu``, say)."""
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.state = {k: np.array(v, dtype=np.float32) for k, v in state.items()}


def weighted_mean(updates: Sequence[Update]) -> np.ndarray:
    """Example-weighted mean of the payloads, each scaled by its schedule weight.

    The normaliser is the plain example count, not the count times the weight: a stale
    update discounted by ``s(staleness)`` must pull the model less, not be renormalised
    back up (FedBuff, Nguyen et al. 2022, Alg. 1). With every weight 1 this is FedAvg's
    example-weighted average. One gemv over the stacked payloads: no Python loop over
    tensors.
    """
    if not updates:
        raise ValueError("cannot aggregate an empty batch of updates")
    counts = np.array([u.num_examples for u in updates], dtype=np.float64)
    if counts.sum() <= 0:
        counts = np.ones_like(counts)
    coef = (counts * np.array([u.weight for u in updates], dtype=np.float64)) / counts.sum()
    if len(updates) == 1:
        return (updates[0].payload * np.float32(coef[0])).astype(np.float32, copy=False)
    stacked = np.stack([u.payload for u in updates])
    return (coef.astype(np.float32) @ stacked).astype(np.float32, copy=False)

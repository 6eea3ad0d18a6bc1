"""A user's own strategy, loaded as ``"tests.plugins:HalfStep"`` without touching fedray."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strategies.base import Strategy, weighted_mean
from strategies.types import Update


@dataclass(frozen=True)
class HalfStepParams:
    fraction: float = 0.5
    """Share of FedAvg's step taken."""


class HalfStep(Strategy):
    """FedAvg that moves only ``fraction`` of the way: a server-only strategy in a few lines."""

    name = "half_step"
    Params = HalfStepParams

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        return global_params + np.float32(self.params.fraction) * weighted_mean(updates)


class NotAStrategy:
    """Something a typo could point at."""

"""A user's own strategy, loaded as ``"tests.plugins:HalfStep"`` without touching fedray."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

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


class Hungry(torch.nn.Module):
    """An MLP whose forward pass also allocates ``gib`` GiB on its device: a participant
    that needs more GPU memory than its cap (tests/test_gpu.py)."""

    def __init__(self, input_shape, num_classes: int, gib: float = 2.0) -> None:
        super().__init__()
        self.gib = gib
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            ballast = torch.empty(int(self.gib * 2**30), dtype=torch.uint8, device=x.device)
            del ballast
        return self.net(x)


def hungry(input_shape, num_classes: int, gib: float = 2.0) -> torch.nn.Module:
    return Hungry(input_shape, num_classes, gib)

"""Staleness functions: how much an update computed on an old model still counts.

``staleness = current_version - base_version``. Each function maps it to a factor in
(0, 1]; the schedule multiplies it into the update's weight. Forms from Xie et al.,
"Asynchronous Federated Optimization" (FedAsync, 2019), also used by FedBuff.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

StalenessKind = Literal["constant", "polynomial", "hinge"]


@dataclass(frozen=True)
class StalenessFunction:
    """``constant``: 1. ``polynomial``: ``(1 + s) ** -a``.
    ``hinge``: 1 while ``s <= b``, then ``1 / (a * (s - b) + 1)``.

    >>> StalenessFunction("polynomial", a=0.5)(3)
    0.5
    >>> StalenessFunction("hinge", a=1.0, b=2)(4)
    0.3333333333333333
    """

    kind: StalenessKind = "polynomial"
    a: float = 0.5
    b: int = 4

    def __call__(self, staleness: int | np.ndarray) -> float | np.ndarray:
        s = np.maximum(np.asarray(staleness, dtype=np.float64), 0.0)
        fn: Callable[[np.ndarray], np.ndarray] = {
            "constant": lambda s: np.ones_like(s),
            "polynomial": lambda s: (1.0 + s) ** (-self.a),
            "hinge": lambda s: np.where(s <= self.b, 1.0, 1.0 / (self.a * (s - self.b) + 1.0)),
        }[self.kind]
        out = fn(s)
        return float(out) if out.ndim == 0 else out

"""Aggregation strategies: one small class per algorithm, no Ray inside.

Look a strategy up by its config name with :func:`get_strategy_class`.
"""

from __future__ import annotations

from strategies.base import Strategy
from strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg,)}


def get_strategy_class(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name.lower()]
    except KeyError:
        raise KeyError(
            f"unknown strategy {name!r}; known strategies: {', '.join(sorted(STRATEGIES))}"
        ) from None


__all__ = ["STRATEGIES", "Strategy", "get_strategy_class"]

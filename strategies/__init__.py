"""Aggregation strategies: one small class per algorithm, no Ray inside.

Look a strategy up by its config name with :func:`get_strategy_class`.
"""

from __future__ import annotations

from strategies.base import Strategy
from strategies.distillation import DSFL, FedDF, FedMD
from strategies.fedavg import FedAvg
from strategies.fedavgm import FedAvgM
from strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from strategies.fedprox import FedProx
from strategies.fedsgd import FedSGD
from strategies.partial import FedPer, FedRep, LGFedAvg, LocalOnly
from strategies.robust import Krum, Median, MultiKrum, TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedSGD,
        FedAvgM,
        FedProx,
        FedAdam,
        FedYogi,
        FedAdagrad,
        Median,
        TrimmedMean,
        Krum,
        MultiKrum,
        FedMD,
        DSFL,
        FedDF,
        FedPer,
        FedRep,
        LGFedAvg,
        LocalOnly,
    )
}


def get_strategy_class(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name.lower()]
    except KeyError:
        raise KeyError(
            f"unknown strategy {name!r}; known strategies: {', '.join(sorted(STRATEGIES))}"
        ) from None


__all__ = ["STRATEGIES", "Strategy", "get_strategy_class"]

"""Aggregation strategies: one small class per algorithm, both halves in one module.

Look a strategy up by its config name, or load a user's own from ``"package.module:Class"``,
with :func:`get_strategy_class`; :func:`build_strategy` also checks its options.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any

from strategies.base import Strategy
from strategies.distillation import DSFL, FedDF, FedMD
from strategies.ditto import Ditto
from strategies.fedavg import FedAvg
from strategies.fedavgm import FedAvgM
from strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from strategies.fedprox import FedProx
from strategies.fedsgd import FedSGD
from strategies.partial import FedPer, FedRep, LGFedAvg, LocalOnly
from strategies.robust import Krum, Median, MultiKrum, TrimmedMean
from strategies.scaffold import Scaffold

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg, FedSGD, FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad, Scaffold, Ditto,
        Median, TrimmedMean, Krum, MultiKrum,
        FedMD, DSFL, FedDF,
        FedPer, FedRep, LGFedAvg, LocalOnly,
    )
}


def get_strategy_class(name: str) -> type[Strategy]:
    """The strategy class for a config name, or a user's ``"package.module:Class"``.

    >>> get_strategy_class("fedavg").__name__
    'FedAvg'
    """
    if ":" in name:
        return _load_plugin(name)
    try:
        return STRATEGIES[name.lower()]
    except KeyError:
        raise KeyError(
            f"unknown strategy {name!r}; known strategies: {', '.join(sorted(STRATEGIES))}, "
            "or your own as 'package.module:Class'"
        ) from None


def build_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """A strategy instance with ``options`` checked against its ``Params`` dataclass.

    >>> build_strategy("fedprox", {"mu": 0.5}).params.mu
    0.5
    """
    cls = get_strategy_class(name)
    options = dict(options or {})
    allowed = {f.name for f in dataclasses.fields(cls.Params)}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"strategy {name!r} has no option(s) {sorted(unknown)}; "
            f"allowed: {', '.join(sorted(allowed)) or 'none'}"
        )
    return cls(_validator(cls.Params).validate_python(options))


@functools.cache
def _validator(params: type) -> Any:
    """The pydantic validator of a ``Params`` dataclass, built once per class (building it
    costs a millisecond, and a pool worker builds a strategy for every participant)."""
    from pydantic import TypeAdapter  # the one validator the config uses too

    return TypeAdapter(params)


def _load_plugin(path: str) -> type[Strategy]:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise KeyError(f"strategy {path!r}: cannot import {module_name!r} ({exc})") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise KeyError(f"strategy {path!r}: {attr!r} in {module_name!r} is not a fedray Strategy class")
    if not dataclasses.is_dataclass(cls.Params):
        raise KeyError(f"strategy {path!r}: its Params must be a dataclass")
    return cls


def names_where(**declared: Any) -> list[str]:
    """Registered strategy names whose class attributes match ``declared``, for messages
    that list alternatives (``names_where(global_state="weights")``)."""
    return sorted(n for n, c in STRATEGIES.items() if all(getattr(c, k) == v for k, v in declared.items()))


__all__ = ["STRATEGIES", "Strategy", "build_strategy", "get_strategy_class", "names_where"]

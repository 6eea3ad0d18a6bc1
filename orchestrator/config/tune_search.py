"""``fedray tune --search SEARCH.yaml``: the search space and its objective."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from actors.spec.base import Strict


class TuneSearch(Strict):
    """``fedray tune --search SEARCH.yaml``: what to vary and what to optimise.

    ``space`` maps a dotted path into the run config (``groups.<group name>.resources.num_cpus``,
    ``schedule.concurrency``, ...) to ``{grid: [...]}``, ``{choice: [...]}``,
    ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}`` or ``{randint: [lo, hi]}``.
    """

    space: dict[str, dict[Literal["grid", "choice", "uniform", "loguniform", "randint"], list[Any]]] = Field(
        ..., min_length=1
    )
    objective: Literal["time_to_target", "cost_to_target", "accuracy_at_budget", "metric_at_budget"] = Field(
        "time_to_target", description="time_to_target: seconds to the target; cost_to_target (simulated "
        "searches): CPU-seconds its tasks reserve until the target, plus gpu_price x GPU-seconds; "
        "metric_at_budget (accuracy_at_budget is its classification name): the task's metric within budget_s")
    target_accuracy: float | None = Field(0.85, gt=0, le=1, description="for a *_to_target objective")
    target: float | None = Field(None, description="for a *_to_target objective: a target for the run's "
                                 "task.metric (r2, mse, macro_f1, ...) instead of target_accuracy")
    gpu_price: float = Field(1.0, ge=0, description="cost_to_target: what a GPU-second costs in CPU-seconds "
                             "(the ratio of your cluster's prices for a GPU and a core)")
    budget_s: float = Field(60.0, gt=0, description="training seconds per trial, from its first dispatch")
    startup_s: float = Field(300.0, ge=0, description="hang guard: wall time a trial may spend starting up")
    max_aggregations: int = Field(100, ge=1, description="each trial's cap on aggregations")
    num_samples: int = Field(1, ge=1, description="repeats of the grid (or random draws)")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="wall-clock trials under Ray Tune; default 1, which keeps wall-clock "
        "timings clean (simulated trials run one after another in the driver, on warm workers)")
    early_stop: bool = Field(True, description="simulated trials: stop one once it cannot be among the best "
                             "(false: every trial runs to its end, for a complete time-against-cost front)")
    driver_cpus: float = Field(0.5, ge=0, description="CPUs reserved for each wall-clock trial's driver")
    num_cpus: float | None = Field(None, gt=0, description="logical CPUs of the local Ray wall-clock trials share")

    @model_validator(mode="after")
    def _well_formed(self) -> TuneSearch:
        for path, spec in self.space.items():
            if len(spec) != 1:
                raise ValueError(f"space.{path}: give exactly one of grid, choice, uniform, loguniform, randint")
            (kind, values), = spec.items()
            if kind in ("uniform", "loguniform", "randint") and len(values) != 2:
                raise ValueError(f"space.{path}: {kind} needs [low, high]")
            if not values:
                raise ValueError(f"space.{path}: {kind} needs at least one value")
        if self.to_target and self.target_accuracy is None and self.target is None:
            raise ValueError(f"objective {self.objective} needs target_accuracy or target")
        return self

    @property
    def to_target(self) -> bool:
        """Scored by what reaching the target took (seconds or cost), lower first."""
        return self.objective in ("time_to_target", "cost_to_target")

"""The simulated system of a participant: speed, links, availability, traces, attacks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from actors.spec.base import Strict


class SpeedDistribution(Strict):
    """Per-participant speeds drawn once at start-up, then divided by the group's
    fastest so the fastest runs at real speed and the rest are slower.

    ``lognormal``: exp(N(0, sigma)); ``exponential``: Exp(1); ``pareto``: 1 + Pareto(shape).
    Speeds are the reciprocal of the drawn slowdown.
    """

    kind: Literal["lognormal", "exponential", "pareto"]
    sigma: float = Field(1.0, gt=0)
    shape: float = Field(1.5, gt=0)
    seed: int = 0


class Availability(Strict):
    """Participant is online for ``on_s`` seconds, offline for ``off_s``, repeating;
    ``phase_s`` shifts its cycle (default: a seeded random phase per participant)."""

    on_s: float = Field(..., gt=0)
    off_s: float = Field(..., ge=0)
    phase_s: float | None = None

    @property
    def period_s(self) -> float:
        return self.on_s + self.off_s


class Windows(Strict):
    """Online during explicit windows ``[start_s, end_s)`` of a ``period_s``-second cycle
    that repeats, so a long run never runs out of trace: what a device trace gives each
    participant (:mod:`orchestrator.cluster.traces`), or written by hand. Windows are sorted, disjoint
    and inside the cycle; there is no random phase (a trace is a timeline from t=0)."""

    windows: tuple[tuple[float, float], ...] = Field(..., min_length=1, description="[[start_s, end_s], ...]")
    period_s: float = Field(..., gt=0, description="the cycle the windows repeat with")
    phase_s: float = Field(0.0, description="shifts the cycle, as Availability.phase_s")

    @model_validator(mode="after")
    def _disjoint_in_cycle(self) -> Windows:
        previous_end = 0.0
        for i, (start, end) in enumerate(self.windows):
            if not previous_end <= start < end <= self.period_s:
                raise ValueError(
                    f"windows[{i}] = [{start:g}, {end:g}]: windows must be sorted, disjoint, each "
                    f"start < end, within [0, period_s={self.period_s:g}]")
            previous_end = end
        return self


def _availability_kind(value: Any) -> str:
    """The union tag: explicit ``windows``, else the periodic on/off model."""
    if isinstance(value, Windows) or (isinstance(value, dict) and "windows" in value):
        return "windows"
    return "periodic"


AvailabilityModel = Annotated[
    Annotated[Availability, Tag("periodic")] | Annotated[Windows, Tag("windows")],
    Discriminator(_availability_kind),
]
"""``availability:``: ``{on_s, off_s, phase_s}`` or ``{windows, period_s}``."""


class TraceSpec(Strict):
    """Per-participant device traces: a table giving each participant its speed, its
    bandwidth and (in a second table) its online windows; the format is documented in
    :mod:`orchestrator.cluster.traces`. Relative paths are relative to the driver's working directory."""

    path: str = Field(..., min_length=1, description="the fleet table (CSV or Parquet), one row per "
                      "participant; with format: fedscale, FedScale's client_device_capacity pickle")
    windows: str | None = Field(
        None, description="online windows (CSV or Parquet: participant, start_s, end_s); with format: "
        "fedscale, FedScale's client_behave_trace pickle. None: the group's availability applies")
    format: Literal["table", "fedscale"] = "table"
    speed_unit: Literal["relative", "samples_per_s", "seconds_per_sample"] = Field(
        "relative", description="the speed column: relative in (0, 1], or absolute (normalised to "
        "the group's fastest = 1, whose seconds per sample become simulated_seconds_per_sample)")
    period_s: float | None = Field(None, gt=0, description="the windows' cycle, for a fleet table "
                                   "without a period_s column (default: the latest end_s)")
    seed: int | None = Field(None, description="fedscale: sample the group's clients with this "
                             "seed (default: the first clients in the files)")

    @model_validator(mode="after")
    def _fits_format(self) -> TraceSpec:
        if self.format == "fedscale" and self.speed_unit != "relative":
            raise ValueError("speed_unit does not apply to format: fedscale (its computation is "
                             "milliseconds per sample)")
        if self.format == "table" and self.seed is not None:
            raise ValueError("seed applies to format: fedscale (a table's rows are matched in order)")
        if self.period_s is not None and self.windows is None:
            raise ValueError("period_s is the windows' cycle: give windows too")
        return self

    @property
    def absolute(self) -> bool:
        """Whether the trace says how many seconds a sample takes (not only relative speeds)."""
        return self.format == "fedscale" or self.speed_unit != "relative"


class AttackSpec(Strict):
    """A Byzantine participant, to test robust strategies: applied inside the
    participant to its own payload. ``sign_flip``: send ``-scale * payload``;
    ``noise``: send Gaussian noise with standard deviation ``scale``."""

    kind: Literal["sign_flip", "noise"] = "sign_flip"
    scale: float = Field(10.0, gt=0)


class SystemSpec(Strict):
    """Simulated heterogeneity, applied inside the participant around real training.

    ``speed`` < 1 stretches each task to ``real_seconds / speed``;
    ``simulated_seconds_per_sample`` instead makes a task last exactly
    ``samples / speed * simulated_seconds_per_sample`` (when that exceeds the real time),
    independent of how loaded the machine is.
    """

    speed: float | SpeedDistribution = Field(1.0, description="relative speed, 1 = real")
    simulated_seconds_per_sample: float | None = Field(None, gt=0)
    bandwidth_mbps: float | None = Field(
        None, gt=0, description="link speed: each task also lasts 2 x model bytes / bandwidth "
        "(the global state down, the update up)",
    )
    dropout_prob: float = Field(0.0, ge=0, le=1)
    hang_prob: float = Field(
        0.0, ge=0, le=1, description="fault injection: chance a task hangs until the "
        "driver's schedule.task_timeout_s kills it",
    )
    availability: AvailabilityModel | None = None
    attack: AttackSpec | None = Field(None, description="make this group Byzantine")
    trace: TraceSpec | None = Field(
        None, description="per-participant speed, bandwidth and online windows from a device "
        "trace (orchestrator/cluster/traces.py); they replace speed, bandwidth_mbps and availability")

    @model_validator(mode="after")
    def _speed_range(self) -> SystemSpec:
        if isinstance(self.speed, float) and not 0 < self.speed <= 1:
            raise ValueError("speed must be in (0, 1]: 1 is real speed, 0.1 ten times slower")
        if self.trace is not None and self.speed != 1.0:
            raise ValueError("speed: the trace gives each participant its speed; drop speed or trace")
        if self.trace is not None and self.trace.windows is not None and self.availability is not None:
            raise ValueError("availability: the trace's windows give each participant its "
                             "availability; drop availability or trace.windows")
        return self

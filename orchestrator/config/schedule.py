"""``schedule:``, *when* to aggregate: one model per mode (sync, buffered, async)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag

from actors.spec.base import Strict
from orchestrator.loop.schedules import Async, Buffered, SchedulePolicy, SyncRounds
from strategies.staleness import StalenessFunction


class Staleness(Strict):
    kind: Literal["constant", "polynomial", "hinge"] = "polynomial"
    a: float = Field(0.5, ge=0)
    b: int = Field(4, ge=0)

    def function(self) -> StalenessFunction:
        return StalenessFunction(self.kind, self.a, self.b)


class ScheduleBase(Strict):
    """*When* to aggregate: what every mode shares. One subclass per ``mode``, so a setting
    of another mode is an error instead of being silently ignored. See
    ``orchestrator/loop/schedules.py`` for the three modes."""

    policy: ClassVar[type[SchedulePolicy]]
    """The policy class that runs this mode; its capabilities drive the config checks."""

    mode: str = Field(..., description="the union tag; each subclass narrows it to one mode")
    # staleness discount: every buffered/async update, and sync's carried late updates
    staleness: Staleness = Staleness()
    max_staleness: int | None = Field(None, ge=0, description="older updates are dropped")
    # adaptive local work: slow participants do fewer local steps
    adaptive_local_work: bool = Field(
        False, description="scale each participant's local steps by its measured samples/s"
    )
    # failures
    task_timeout_s: float | None = Field(None, gt=0)
    max_failures: int = Field(3, ge=1, description="consecutive failures before a participant is dropped")
    min_participants: int = Field(1, ge=1)


class SyncSchedule(ScheduleBase):
    """Rounds, with over-selection, a deadline, and late updates dropped or carried."""

    policy: ClassVar[type[SchedulePolicy]] = SyncRounds
    mode: Literal["sync"] = "sync"
    clients_per_round: int | None = Field(None, ge=1, description="default: all")
    over_select: float = Field(0.0, ge=0, description="extra fraction dispatched per round")
    deadline_s: float | None = Field(None, gt=0)
    late_updates: Literal["drop", "carry"] = "drop"
    sum_in_workers: bool = Field(
        True, description="a pool worker trains its participants' tasks of a round in one call and sends "
        "back one weighted sum of their deltas, where the strategy and schedule allow it "
        "(orchestrator/cluster/worker_sums.py); false: one call per task")


class BufferedSchedule(ScheduleBase):
    """FedBuff: keep ``concurrency`` participants busy, aggregate every ``buffer_size``."""

    policy: ClassVar[type[SchedulePolicy]] = Buffered
    mode: Literal["buffered"] = "buffered"
    concurrency: int | None = Field(None, ge=1, description="participants kept busy; default: all")
    buffer_size: int = Field(4, ge=1)


class AsyncSchedule(ScheduleBase):
    """FedAsync: every update is its own aggregation, mixed in with weight ``alpha``."""

    policy: ClassVar[type[SchedulePolicy]] = Async
    mode: Literal["async"] = "async"
    concurrency: int | None = Field(None, ge=1, description="participants kept busy; default: all")
    alpha: float = Field(0.6, gt=0, le=1, description="FedAsync mixing weight")


SCHEDULE_MODES: dict[str, type[ScheduleBase]] = {
    "sync": SyncSchedule, "buffered": BufferedSchedule, "async": AsyncSchedule,
}


def _schedule_mode(value: Any) -> str:
    """The union tag: ``mode`` as written, ``sync`` when omitted. Anything but a mapping
    goes to sync, whose own validation then says what was expected."""
    if isinstance(value, ScheduleBase):
        return value.mode
    if isinstance(value, dict) and "mode" in value:
        mode = value["mode"]
        return mode if isinstance(mode, str) else repr(mode)  # an unknown tag either way
    return "sync"


Schedule = Annotated[
    Annotated[SyncSchedule, Tag("sync")]
    | Annotated[BufferedSchedule, Tag("buffered")]
    | Annotated[AsyncSchedule, Tag("async")],
    Discriminator(_schedule_mode),
]
"""``schedule:``, one model per ``mode`` (default ``sync``)."""

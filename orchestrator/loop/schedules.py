"""*When* to dispatch and when to aggregate: synchronous rounds, FedBuff, FedAsync.

A schedule is a small policy object the run loop consults; it never touches Ray. The
loop asks it which idle participants to start, whether an arriving update is admitted
(and with what weight), and whether the buffer is ready to aggregate.

- ``sync``: rounds. Select ``clients_per_round`` (times ``1 + over_select``), aggregate
  when enough have answered, when all selected have answered or failed, or at the
  deadline. Updates from an earlier round are dropped or carried with their staleness.
- ``buffered`` (FedBuff, Nguyen et al., AISTATS 2022): keep ``concurrency`` participants
  busy; aggregate every ``buffer_size`` updates, each weighted by ``s(staleness)``.
- ``async`` (FedAsync, Xie et al., 2019): aggregate every update as it lands, mixed in
  with weight ``alpha * s(staleness)``.

Weights reach the strategy as ``Update.weight``; FedAvg then steps
``x <- x + server_lr * sum(n_i * w_i * delta_i) / sum(n_i)``. Under FedBuff the sum is not
renormalised by the weights, so a stale buffer moves the model less (Nguyen et al., Alg. 1).

FedAsync here mixes the participant's *delta*, ``x <- x + alpha * s * (x_local - x_base)``,
rather than the paper's ``x <- (1 - alpha * s) * x + alpha * s * x_local``. The two agree
for a fresh update; for a stale one the paper's form also pulls the current model back
towards the old base ``x_base`` by ``alpha * s * (x - x_base)``, undoing progress the others
made meanwhile, while the delta form keeps that progress and adds only what the
participant learned. It also lets every strategy (server optimisers included) run under
``async`` unchanged, because they all consume deltas.

Every policy decision is a plain method call, so they are unit-tested by hand
(``tests/test_schedules.py``); the run loop in ``orchestrator/loop/run.py`` owns all waiting.

What a policy can and cannot do is declared on its class (``supports_secure_aggregation``,
``waits_for_cohort``, ``max_cohort``), so the config check and the run loop ask the policy
rather than compare mode strings. Each config model in ``orchestrator/config/schedule.py`` names its
policy class; this module imports the config only for type checking, so no import cycle.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from orchestrator.config import AsyncSchedule, BufferedSchedule, Schedule, SyncSchedule


@dataclass
class Task:
    """One dispatched unit of work, as the driver remembers it."""

    participant: str
    task_id: int
    base_version: int
    round: int
    dispatched_at: float


@dataclass
class Admission:
    """Whether an arriving update joins the buffer, its weight, and why (for the history)."""

    accepted: bool
    weight: float = 1.0
    reason: str = ""


@dataclass
class SchedulePolicy:
    """Shared machinery; subclasses decide selection, admission and readiness."""

    supports_secure_aggregation: ClassVar[bool] = True
    """Whether a batch this policy aggregates can be a secure-aggregation cohort."""
    no_secure_aggregation_because: ClassVar[str] = ""
    """Why not, when ``supports_secure_aggregation`` is False (ends the config error)."""
    waits_for_cohort: ClassVar[bool] = False
    """Under secure aggregation, whether a ready batch from fewer than ``min_cohort``
    participants waits for more of them (True) or is aggregated, hence aborted (False)."""

    config: Schedule
    rng: np.random.Generator
    round: int = 0
    staleness_fn: object = field(init=False)

    def __post_init__(self) -> None:
        self.staleness_fn = self.config.staleness.function()

    @classmethod
    def max_cohort(cls, config: Schedule, num_participants: int) -> tuple[int, str]:
        """The most distinct participants one aggregation can mix, and what sets that bound
        (for the config-time ``privacy.min_cohort`` check)."""
        return num_participants, "participants in the run"

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to make the same decisions (config excluded: it
        comes back from the run's config); plain data, copied, safe to pickle."""
        return {"policy": type(self).__name__, "round": self.round,
                "rng": copy.deepcopy(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of the same policy class."""
        if state["policy"] != type(self).__name__:
            raise ValueError(
                f"schedule state is for {state['policy']}, not {type(self).__name__}; "
                "was schedule.mode changed?"
            )
        self.round = int(state["round"])
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])

    def select(self, idle: list[str], busy: int, alive: int, now: float) -> list[str]:
        raise NotImplementedError

    def admit(self, task: Task, staleness: int) -> Admission:
        raise NotImplementedError

    def ready(self, buffered: int, now: float) -> bool:
        raise NotImplementedError

    def task_finished(self, task: Task) -> None:
        """Called for every finished task, successful or not."""

    def aggregated(self, now: float) -> None:
        """Called after each aggregation (or a round closed with nothing to aggregate)."""

    def deadline(self) -> float | None:
        """The next moment the loop must wake up even if nothing arrives."""
        return None

    def _too_stale(self, staleness: int) -> bool:
        limit = self.config.max_staleness
        return limit is not None and staleness > limit

    def _pick(self, idle: list[str], n: int) -> list[str]:
        n = min(n, len(idle))
        if n <= 0:
            return []
        chosen = self.rng.choice(len(idle), size=n, replace=False)
        return [idle[i] for i in sorted(chosen)]


class SyncRounds(SchedulePolicy):
    """Classic rounds, with optional over-selection, a deadline and carried late updates."""

    open: bool = False
    selected: set[str]
    finished: set[str]
    received: int = 0
    target: int = 0
    started_at: float = 0.0

    config: SyncSchedule

    def __post_init__(self) -> None:
        super().__post_init__()
        self.selected, self.finished = set(), set()

    @classmethod
    def max_cohort(cls, config: SyncSchedule, num_participants: int) -> tuple[int, str]:
        if config.clients_per_round:
            return config.clients_per_round, "schedule.clients_per_round"
        return super().max_cohort(config, num_participants)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "open": self.open, "selected": sorted(self.selected), "finished": sorted(self.finished),
            "received": self.received, "target": self.target, "started_at": self.started_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.open, self.received, self.target = bool(state["open"]), state["received"], state["target"]
        self.selected, self.finished = set(state["selected"]), set(state["finished"])
        self.started_at = float(state["started_at"])

    def select(self, idle: list[str], busy: int, alive: int, now: float) -> list[str]:
        if self.open:
            return []
        wanted = min(self.config.clients_per_round or alive, alive)
        picked = self._pick(idle, math.ceil(wanted * (1 + self.config.over_select)))
        if not picked:
            return []
        self.round += 1
        self.open, self.started_at, self.received = True, now, 0
        self.selected, self.finished = set(picked), set()
        self.target = min(wanted, len(picked)) if self.config.over_select > 0 else len(picked)
        return picked

    def admit(self, task: Task, staleness: int) -> Admission:
        if self.open and task.round == self.round:
            self.received += 1
            return Admission(True, 1.0)
        if self.config.late_updates == "drop":
            return Admission(False, reason=f"late: from round {task.round}, now round {self.round}")
        if self._too_stale(staleness):
            return Admission(False, reason=f"staleness {staleness} > max_staleness")
        return Admission(True, float(self.staleness_fn(staleness)), "carried")

    def task_finished(self, task: Task) -> None:
        if task.round == self.round:
            self.finished.add(task.participant)

    def ready(self, buffered: int, now: float) -> bool:
        if not self.open:
            return False
        if self.received >= self.target or self.finished >= self.selected:
            return True
        return self.config.deadline_s is not None and now >= self.started_at + self.config.deadline_s

    def aggregated(self, now: float) -> None:
        self.open = False

    def deadline(self) -> float | None:
        if self.open and self.config.deadline_s is not None:
            return self.started_at + self.config.deadline_s
        return None


class Buffered(SchedulePolicy):
    """FedBuff: constant concurrency, aggregate every ``buffer_size`` arrivals."""

    waits_for_cohort = True  # a buffer can keep filling until enough participants mix in
    config: BufferedSchedule | AsyncSchedule

    def buffer_size(self) -> int:
        return self.config.buffer_size

    def select(self, idle: list[str], busy: int, alive: int, now: float) -> list[str]:
        concurrency = min(self.config.concurrency or alive, alive)
        return self._pick(idle, concurrency - busy)

    def admit(self, task: Task, staleness: int) -> Admission:
        if self._too_stale(staleness):
            return Admission(False, reason=f"staleness {staleness} > max_staleness")
        return Admission(True, float(self.staleness_fn(staleness)))

    def ready(self, buffered: int, now: float) -> bool:
        return buffered >= self.buffer_size()


class Async(Buffered):
    """FedAsync: every update is its own aggregation, mixed in by ``alpha * s(staleness)``."""

    supports_secure_aggregation = False
    no_secure_aggregation_because = (
        "every update is its own aggregation, so its 'sum' is the update itself"
    )
    waits_for_cohort = False  # a cohort of one never grows
    config: AsyncSchedule

    def buffer_size(self) -> int:
        return 1

    def admit(self, task: Task, staleness: int) -> Admission:
        admission = super().admit(task, staleness)
        admission.weight *= self.config.alpha
        return admission


def make_schedule(config: Schedule, seed: int) -> SchedulePolicy:
    """The policy ``config`` names; ``seed`` makes participant selection reproducible.

    >>> from orchestrator.config import BufferedSchedule
    >>> make_schedule(BufferedSchedule(buffer_size=2), seed=0).ready(2, now=0.0)
    True
    """
    return config.policy(config, np.random.default_rng(seed))

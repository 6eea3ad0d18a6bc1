"""The straggler and availability simulator: reproducible heterogeneity on any machine.

Used inside the participant around its real training (never as a sleep in the driver),
so a laptop behaves like a fleet of known speeds that come and go.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from actors.spec.participant import ParticipantSpec
from actors.spec.system import Availability, SpeedDistribution, SystemSpec, Windows


class SimulatedDropout(RuntimeError):
    """The participant dropped this task (``dropout_prob`` or going offline mid-task)."""


class Unavailable(RuntimeError):
    """The participant is offline; ``retry_at`` is the wall time it comes back."""

    def __init__(self, name: str, retry_at: float) -> None:
        super().__init__(name, retry_at)  # args pickle, so the driver gets both back
        self.name, self.retry_at = name, retry_at

    def __str__(self) -> str:
        return f"participant {self.name} is offline until t={self.retry_at:.1f}s"


def draw_speeds(dist: SpeedDistribution, count: int) -> np.ndarray:
    """Relative speeds in (0, 1], fastest = 1, drawn once from ``dist`` with its seed."""
    rng = np.random.default_rng(dist.seed)
    if dist.kind == "lognormal":
        slowdown = rng.lognormal(0.0, dist.sigma, count)
    elif dist.kind == "exponential":
        slowdown = rng.exponential(1.0, count)
    else:
        slowdown = 1.0 + rng.pareto(dist.shape, count)
    slowdown = slowdown / slowdown.min()
    return 1.0 / slowdown


def transfer_seconds(system: SystemSpec, nbytes: int) -> float:
    """Seconds on the link for one task: the global state down and the update up."""
    return 2 * nbytes * 8 / (system.bandwidth_mbps * 1e6) if system.bandwidth_mbps else 0.0


def never_waits(spec: ParticipantSpec, simulated_clock: bool) -> bool:
    """Whether this participant's tasks last their real time and no more: no simulated
    wait (speed, per-sample time, bandwidth; none at all under the simulated clock), no
    availability window, no injected hang."""
    system = spec.system
    if system.hang_prob > 0 or system.availability is not None or system.trace is not None:
        return False
    return simulated_clock or (spec.speed == 1.0 and not system.simulated_seconds_per_sample
                               and not system.bandwidth_mbps)


def task_duration(real_s: float, samples: int, speed: float, system: SystemSpec, nbytes: int = 0) -> float:
    """How long the task should appear to take under the wall clock (never shorter than it
    really took)."""
    if system.simulated_seconds_per_sample:
        target = simulated_duration(system, speed, samples, nbytes)
    else:
        target = real_s / speed + transfer_seconds(system, nbytes)
    return max(real_s, target)


def simulated_duration(system: SystemSpec, speed: float, samples: int, nbytes: int) -> float:
    """A task's duration under the simulated clock: the system model alone, known when
    the task is dispatched, whatever the machine's load."""
    return samples * (system.simulated_seconds_per_sample or 0.0) / speed + transfer_seconds(system, nbytes)


def initial_phase(avail: Availability | Windows | None, rng: np.random.Generator) -> float:
    """Where in its cycle a participant starts: ``phase_s`` when given, else (periodic
    availability only) a draw from ``rng``, so a fleet does not blink in unison."""
    if avail is None:
        return 0.0
    if avail.phase_s is not None:
        return avail.phase_s
    return float(rng.uniform(0, avail.period_s))


def online_until(avail: Availability | Windows, phase: float, now: float) -> tuple[bool, float]:
    """``(online, t)``: whether the participant is online at ``now`` (seconds since the run
    began) and when that changes next (``inf``: never).

    >>> online_until(Windows(windows=[(10, 20)], period_s=100), 0.0, 115.0)
    (True, 120.0)
    """
    if isinstance(avail, Windows):
        online, change_at = windows_online_until(avail.windows, avail.period_s, now + phase)
        return online, change_at - phase
    period = avail.on_s + avail.off_s
    pos = math.fmod(now + phase, period)
    if pos < avail.on_s:
        return True, now + (avail.on_s - pos)
    return False, now + (period - pos)


def windows_online_until(windows: Sequence[tuple[float, float]], period: float,
                         now: float) -> tuple[bool, float]:
    """``online_until`` for sorted, disjoint ``[start, end)`` windows of a repeating
    ``period``. A window that ends the cycle joins one that starts the next.

    >>> windows_online_until([(0, 30), (50, 100)], 100, 260.0)   # online through 300..330
    (True, 330.0)
    >>> windows_online_until([(0, 30), (50, 100)], 100, 235.0)
    (False, 250.0)
    """
    pos = now % period
    cycle = now - pos
    first_start, first_end = windows[0]
    for start, end in windows:
        if pos < start:
            return False, cycle + start
        if pos < end:
            if end < period or first_start > 0:
                return True, cycle + end
            if first_end >= period:  # one window covering the whole cycle
                return True, math.inf
            return True, cycle + period + first_end
    return False, cycle + period + first_start


HANG_SECONDS = 3600.0
"""How long an injected hang lasts: only the driver's ``task_timeout_s`` ends it sooner."""


def check_online(spec: ParticipantSpec, phase: float, run_clock: float) -> None:
    """Raise :class:`Unavailable` when the participant's availability has it offline now."""
    availability = spec.system.availability
    if availability is None:
        return
    online, change_at = online_until(availability, phase, run_clock)
    if not online:
        raise Unavailable(spec.name, change_at)


def play_out(spec: ParticipantSpec, phase: float, rng: np.random.Generator, real: float, samples: int,
             run_clock: float, nbytes: int, simulated: float | None, wait: Callable[[float], None]) -> float:
    """Stretch a task to its simulated duration with ``wait``, or under the simulated clock
    take the one the driver fixed (no waiting); maybe drop it. Returns its seconds."""
    system = spec.system
    duration = simulated if simulated is not None else task_duration(real, samples, spec.speed, system, nbytes)
    waits = simulated is None  # the wall clock: the task really lasts that long
    if system.availability is not None:
        _, offline_at = online_until(system.availability, phase, run_clock)
        if run_clock + duration > offline_at:
            if waits:
                wait(max(0.0, offline_at - run_clock - real))
            raise SimulatedDropout(f"participant {spec.name} went offline mid-task")
    if system.hang_prob > 0 and rng.random() < system.hang_prob:
        wait(HANG_SECONDS)  # fault injection: only the driver's task_timeout_s ends this
    dropped = system.dropout_prob > 0 and rng.random() < system.dropout_prob
    if waits:
        wait(max(0.0, duration - real))
    if dropped:
        raise SimulatedDropout(f"participant {spec.name} dropped the task")
    return duration

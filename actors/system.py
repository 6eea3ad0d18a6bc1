"""The straggler and availability simulator: reproducible heterogeneity on any machine.

Used inside the participant around its real training (never as a sleep in the driver),
so a laptop behaves like a fleet of known speeds that come and go.
"""

from __future__ import annotations

import math
import time

import numpy as np

from actors.spec import Availability, SpeedDistribution, SystemSpec


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


def task_duration(real_s: float, samples: int, speed: float, system: SystemSpec, nbytes: int = 0) -> float:
    """How long the task should appear to take under the wall clock (never shorter than it
    really took)."""
    spp = system.simulated_seconds_per_sample
    target = samples * spp / speed if spp else real_s / speed
    return max(real_s, target + transfer_seconds(system, nbytes))


def simulated_duration(system: SystemSpec, speed: float, samples: int, nbytes: int) -> float:
    """A task's duration under the simulated clock: the system model alone, known when
    the task is dispatched, whatever the machine's load."""
    return samples * (system.simulated_seconds_per_sample or 0.0) / speed + transfer_seconds(system, nbytes)


def online_until(avail: Availability, phase: float, now: float) -> tuple[bool, float]:
    """``(online, t)``: whether the participant is online at ``now`` (seconds since the run
    began) and when that changes next."""
    period = avail.on_s + avail.off_s
    pos = math.fmod(now + phase, period)
    if pos < avail.on_s:
        return True, now + (avail.on_s - pos)
    return False, now + (period - pos)


def sleep_until(deadline: float) -> None:
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)

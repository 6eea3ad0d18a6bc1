"""Calibration: what a group's local training really costs at an allocation, measured once.

Simulated time is only worth tuning on if a task's duration depends on its allocation the
way real hardware does. ``fedray profile`` measures each group at a few candidate
allocations and writes this file; the simulated clock then prices every task from it, so
thousands of simulated trials cost one short measurement.

The file is JSON::

    {
      "version": 2,
      "machine": {"hostname": "...", "cpus": 2, "gpus": 0, ...},   # where it was measured
      "overheads": {                    # what a run costs beside training (0 when absent)
        "task_seconds": 0.004,          # seconds each task takes beyond its training
        "aggregation_seconds": 0.009,   # the driver's own seconds per aggregation
        "evaluation_seconds": 0.004,    # and per evaluation of the global model
        "rounds_measured": 4},
      "rows": [
        {"group": "hospital",           # the config's group name
         "num_cpus": 2.0,               # torch threads / Ray CPUs of the measured task
         "num_gpus": 0.0,               # GPU share (0: CPU only)
         "batched": false,              # several participants trained in one forward (pools)
         "seconds_per_sample": 0.0004,  # marginal cost of one training sample
         "fixed_seconds": 0.012,        # per task, whatever its samples (set-up, optimizer)
         "peak_memory_bytes": 3.1e8,    # process RSS at its peak
         "gpu_memory_bytes": 0,         # peak GPU memory allocated
         "samples_measured": 4096}      # how much the figures rest on
      ]
    }

``machine`` is free-form (a record for the reader); every row field is required; a version
1 file (no ``overheads``) is read with every overhead 0. A task
of ``samples`` samples costs ``fixed_seconds + seconds_per_sample * samples``; between
measured CPU counts both terms follow ``a + b / num_cpus`` through the two neighbours (the
Amdahl shape: a serial part plus a part split over the CPUs), and outside the measured
range they are those of the nearest measured count, so a plan never counts on a speed-up
nobody saw.

The overheads are what a row cannot see: a row times training inside one process, while
a run also ships each task through Ray, checks and records its update on the driver, and
stops between rounds to aggregate, evaluate and broadcast. On the 2-core machine where
this was written, a task took 3-6 ms beyond its training and the driver 9-14 ms a round,
next to rounds of about 110 ms: left out, predictions fell 30-54% short of the wall clock.

>>> rows = [Measurement("a", c, 0.0, False, s, 0.0, 0, 0, 100) for c, s in ((1, 0.4), (4, 0.1))]
>>> Calibration({}, rows).task_seconds("a", num_cpus=2, num_gpus=0, samples=10)
2.0
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

VERSION = 2
READABLE = (1, 2)


class CalibrationError(ValueError):
    """A calibration file is unreadable, or does not cover what is asked of it."""


@dataclass(frozen=True)
class Measurement:
    """One group measured at one allocation (a row of the file)."""

    group: str
    num_cpus: float
    num_gpus: float
    batched: bool
    seconds_per_sample: float
    fixed_seconds: float
    peak_memory_bytes: float
    gpu_memory_bytes: float
    samples_measured: int

    def seconds(self, samples: float) -> float:
        return self.fixed_seconds + self.seconds_per_sample * samples


_FIELDS = [f.name for f in fields(Measurement)]


@dataclass(frozen=True)
class Overheads:
    """What a run costs beside local training, measured on a short real run (module docstring)."""

    task_seconds: float = 0.0
    aggregation_seconds: float = 0.0
    evaluation_seconds: float = 0.0
    rounds_measured: int = 0


_OVERHEADS = [f.name for f in fields(Overheads)]


class Calibration:
    """The measured rows, and the cost of a task at any allocation derived from them."""

    def __init__(self, machine: dict[str, Any], rows: list[Measurement],
                 overheads: Overheads | None = None) -> None:
        seen: set[tuple[str, float, float, bool]] = set()
        for row in rows:
            key = (row.group, row.num_cpus, row.num_gpus, row.batched)
            if key in seen:
                raise CalibrationError(f"group {row.group!r} is measured twice at num_cpus="
                                       f"{row.num_cpus:g}, num_gpus={row.num_gpus:g}, batched={row.batched}")
            seen.add(key)
            if row.num_cpus <= 0 or min(row.num_gpus, row.seconds_per_sample, row.fixed_seconds) < 0:
                raise CalibrationError(f"group {row.group!r}: num_cpus must be > 0 and num_gpus, "
                                       f"seconds_per_sample, fixed_seconds >= 0; got {row}")
        self.overheads = overheads or Overheads()
        if min(self.overheads.task_seconds, self.overheads.aggregation_seconds, self.overheads.evaluation_seconds) < 0:
            raise CalibrationError(f"overheads must be >= 0 seconds; got {self.overheads}")
        self.machine = dict(machine)
        self.rows = sorted(rows, key=lambda r: (r.group, r.num_gpus, r.batched, r.num_cpus))

    def save(self, path: str | Path) -> None:
        data = {"version": VERSION, "machine": self.machine, "overheads": asdict(self.overheads),
                "rows": [asdict(r) for r in self.rows]}
        Path(path).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a file :meth:`save` wrote; refuse another version or a row lacking fields."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise CalibrationError(f"{path}: cannot read it ({exc.strerror}); write one with "
                                   "fedray profile CONFIG --allocations ... --calibration FILE") from exc
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{path}: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise CalibrationError(f"{path}: expected a JSON object with version, machine, rows")
        missing = [k for k in ("version", "machine", "rows") if k not in data]
        if missing:
            raise CalibrationError(f"{path}: missing {', '.join(missing)}")
        if data["version"] not in READABLE:
            raise CalibrationError(f"{path}: version {data['version']!r} is not one this fedray "
                                   f"reads (versions {', '.join(map(str, READABLE))}); re-run fedray profile")
        overheads = _overheads(data.get("overheads", {}), f"{path}: overheads")
        return cls(data["machine"], [_row(r, f"{path}: row {i}") for i, r in enumerate(data["rows"])], overheads)

    def groups(self) -> list[str]:
        return sorted({r.group for r in self.rows})

    def task_seconds(self, group: str, num_cpus: float, num_gpus: float, samples: float,
                     batched: bool = False) -> float:
        """Seconds a task of ``samples`` samples takes at this allocation (module docstring)."""
        rows = self._family(group, num_gpus, batched)
        below = [r for r in rows if r.num_cpus <= num_cpus]
        above = [r for r in rows if r.num_cpus >= num_cpus]
        if not below:
            return above[0].seconds(samples)
        if not above:
            return below[-1].seconds(samples)
        lo, hi = below[-1], above[0]
        if lo is hi:
            return lo.seconds(samples)
        # a + b / cpus through both neighbours: linear in 1 / cpus
        w = (1 / num_cpus - 1 / hi.num_cpus) / (1 / lo.num_cpus - 1 / hi.num_cpus)
        return w * lo.seconds(samples) + (1 - w) * hi.seconds(samples)

    def _family(self, group: str, num_gpus: float, batched: bool) -> list[Measurement]:
        """The rows that can price ``group`` at this GPU share and batching, by CPUs.

        A GPU share is not a speed dial (Ray does not throttle a fractional GPU), so an
        unmeasured share borrows the nearest measured one; CPU-only and GPU rows never
        stand in for each other, nor batched for unbatched."""
        rows = [r for r in self.rows if r.group == group]
        if not rows:
            raise CalibrationError(f"group {group!r} was never calibrated (calibrated: "
                                   f"{', '.join(self.groups()) or 'none'}); run fedray profile for it")
        same = [r for r in rows if r.batched == batched and (r.num_gpus > 0) == (num_gpus > 0)]
        if not same:
            have = sorted({(r.num_gpus, r.batched) for r in rows})
            raise CalibrationError(
                f"group {group!r} was not calibrated {'on a GPU' if num_gpus > 0 else 'on CPUs only'}"
                f"{' batched' if batched else ' unbatched'}; measured (num_gpus, batched): {have}")
        share = min({r.num_gpus for r in same}, key=lambda g: (abs(g - num_gpus), g))
        return [r for r in same if r.num_gpus == share]


def _row(data: Any, where: str) -> Measurement:
    if not isinstance(data, dict):
        raise CalibrationError(f"{where}: expected an object, got {data!r}")
    missing = [k for k in _FIELDS if k not in data]
    unknown = sorted(set(data) - set(_FIELDS))
    if missing or unknown:
        raise CalibrationError(f"{where}: " + "; ".join(
            part for part in (missing and f"missing {', '.join(missing)}",
                              unknown and f"unknown {', '.join(unknown)}") if part))
    try:
        return Measurement(
            group=str(data["group"]), batched=_bool(data["batched"]),
            samples_measured=int(data["samples_measured"]),
            **{k: float(data[k]) for k in _FIELDS if k not in ("group", "batched", "samples_measured")})
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{where}: {exc}") from exc


def _overheads(data: Any, where: str) -> Overheads:
    if not isinstance(data, dict):
        raise CalibrationError(f"{where}: expected an object, got {data!r}")
    unknown = sorted(set(data) - set(_OVERHEADS))
    if unknown:
        raise CalibrationError(f"{where}: unknown {', '.join(unknown)} (known: {', '.join(_OVERHEADS)})")
    try:
        return Overheads(**{k: int(v) if k == "rounds_measured" else float(v) for k, v in data.items()})
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{where}: {exc}") from exc


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"batched must be true or false, got {value!r}")
    return value

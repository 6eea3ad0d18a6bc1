"""Device traces: replay a measured fleet's speeds, links and comings and goings.

A group's ``system.trace`` names a fleet table and, optionally, a windows table (CSV, or
Parquet when the name ends in ``.parquet`` or ``.pq``); the driver reads them once, in
:func:`participant_systems`, and gives each participant its own speed and system, so the
participant (and the simulated clock's duration) needs nothing new.

**Fleet table**, one row per participant:

- ``participant`` (optional): the participant's name (``phones-3``) or its index within
  the group (``3``). Without it, row i is participant i and extra rows are ignored; with
  it, every row must name a participant of the group and every participant needs a row.
- ``speed`` (required): with ``speed_unit: relative``, a speed in (0, 1] (1 = as fast as
  ``simulated_seconds_per_sample`` says, or real speed). With ``samples_per_s`` or
  ``seconds_per_sample``, an absolute rate, normalised so the group's fastest participant
  has speed 1; its seconds per sample become the group's ``simulated_seconds_per_sample``
  unless the group sets one (which then keeps the trace's spread but rescales it).
- ``bandwidth_mbps`` (optional): link speed in Mbit/s (absent, or an empty cell: the group's).
- ``period_s`` (optional): the cycle this participant's windows repeat with.
- ``source`` (optional, ignored): where a row came from, e.g. a FedScale client id.

**Windows table** (``trace.windows``), long, one row per online window: ``participant``
(name or index, as above), ``start_s`` and ``end_s``: online from ``start_s`` (included)
to ``end_s`` (excluded), in seconds from the start of the run. A participant's windows
repeat every ``period_s``: its row's ``period_s``, else ``trace.period_s``, else the
latest ``end_s`` in the table, so a long run never runs out of trace. Overlapping windows
merge; every participant needs at least one window. With pandas::

    pd.DataFrame({"participant": [0, 0, 1], "start_s": [0, 7200, 0],
                  "end_s": [3600, 9000, 86400]}).to_csv("windows.csv", index=False)

**FedScale** (``format: fedscale``; :func:`fedscale_tables` converts its files into the
two tables above, to keep as CSV). FedScale (github.com/SymbioticLab/FedScale) publishes
two pickled dicts keyed by client id, read here as its own code uses them
(``fedscale/cloud/internal/client_metadata.py``, ``fedscale/cloud/aggregation/aggregator.py``,
``benchmark/dataset/data/device_info/README.md``):

- ``client_device_capacity``: ``{'computation': ..., 'communication': ...}``. Computation
  is the device's inference latency in milliseconds per sample; FedScale charges a
  training sample three times that (the backward pass costs about twice the forward), so
  seconds per sample = 3 x computation / 1000. Communication is the bandwidth in kbit/s:
  FedScale divides the model's size in kbit (bytes / 1024 x 8) by it, so Mbit/s =
  communication x 1024 / 1e6.
- ``client_behave_trace``: ``{'active': [...], 'inactive': [...], 'finish_time': ...,
  'duration': ..., 'model': ...}``. ``active[i]`` is when the device comes online and
  ``inactive[i]`` when it goes offline again (seconds, paired by position); FedScale
  takes the time modulo ``finish_time``, so the trace repeats with that period.
  ``duration`` and ``model`` (the phone model) are not used for availability.

FedScale pairs the two files by client position, not by a shared id; so does this
reader: participant i gets the i-th chosen client of each file (the first N, or a
sample drawn with ``trace.seed``). Unpickling runs code: load only files you trust.
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from actors.data.tables import DataError, read_frame
from actors.spec.system import SystemSpec, TraceSpec, Windows

FLEET_COLUMNS = ("participant", "speed", "bandwidth_mbps", "period_s", "source")
WINDOW_COLUMNS = ("participant", "start_s", "end_s")
FEDSCALE_TRAIN_FACTOR = 3.0
"""FedScale's cost of a training sample, in inference latencies (forward + backward)."""


class TraceError(ValueError):
    """A trace that cannot be used; the message names the group, the file and the column."""


def participant_systems(system: SystemSpec, group: str, names: Sequence[str]) -> list[tuple[float, SystemSpec]]:
    """Each participant's relative speed and its own system, from the group's trace:
    bandwidth, availability windows and seconds per sample filled in, ``trace`` cleared."""
    trace = system.trace
    assert trace is not None, "only for a group with system.trace"
    where = f"group {group}: trace {trace.path}"
    fleet, windows = load_tables(trace, len(names), group)
    lookup = {name: i for i, name in enumerate(names)}
    rows = fleet.iloc[match_rows(fleet, lookup, where)]
    unit = "seconds_per_sample" if trace.format == "fedscale" else trace.speed_unit  # as converted
    speeds, fastest_spp = relative_speeds(rows, unit, where)
    bandwidths = positive(rows, "bandwidth_mbps", where, blanks=True) if "bandwidth_mbps" in rows else None
    if windows is None:
        if "period_s" in rows:
            raise TraceError(f"{where}: column period_s is the windows' cycle: give trace.windows too")
        availability: list[Any] = [system.availability] * len(names)
    else:
        availability = participant_windows(windows, rows, trace.period_s, lookup,
                                           f"group {group}: trace windows {trace.windows}")
    out = []
    for i in range(len(names)):
        update: dict[str, Any] = {"trace": None, "availability": availability[i]}
        if system.simulated_seconds_per_sample is None and fastest_spp is not None:
            update["simulated_seconds_per_sample"] = fastest_spp
        if bandwidths is not None and not np.isnan(bandwidths[i]):  # a blank keeps the group's
            update["bandwidth_mbps"] = float(bandwidths[i])
        out.append((float(speeds[i]), system.model_copy(update=update)))
    return out


# -- reading and matching tables --------------------------------------------------


def load_tables(trace: TraceSpec, count: int, group: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The group's fleet table and windows table (None without ``trace.windows``),
    checked for their columns; errors name the group and the file."""
    where, where_windows = f"group {group}: trace {trace.path}", f"group {group}: trace windows {trace.windows}"
    if trace.format == "fedscale":
        fleet, windows = fedscale_tables(trace.path, trace.windows, count, trace.seed, f"group {group}: trace")
    else:
        fleet = read_table(trace.path, where)
        windows = None if trace.windows is None else read_table(trace.windows, where_windows)
    check_columns(fleet, FLEET_COLUMNS, ("speed",), where)
    if windows is not None:
        check_columns(windows, WINDOW_COLUMNS, WINDOW_COLUMNS, where_windows)
    return fleet, windows


def read_table(path: str | Path, where: str) -> pd.DataFrame:
    """A trace's CSV or Parquet file, read by :func:`actors.data.tables.read_frame` (the
    one reader of table files; a trace may have no rows); its errors are :class:`TraceError`."""
    try:
        return read_frame(Path(path), where, what="file", empty_ok=True)
    except DataError as exc:
        raise TraceError(str(exc)) from None


def check_columns(frame: pd.DataFrame, allowed: Sequence[str], required: Sequence[str], where: str) -> None:
    """Unknown columns are errors (a typo must not be ignored), as are missing ones."""
    unknown = [str(c) for c in frame.columns if c not in allowed]
    if unknown:
        hint = " (write the CSV with index=False)" if any(c.startswith("Unnamed") for c in unknown) else ""
        raise TraceError(f"{where}: unknown column(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}{hint}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TraceError(f"{where}: column {missing[0]!r} is missing; the table has: "
                         f"{', '.join(map(str, frame.columns)) or 'no columns'}")


def participant_index(value: Any, lookup: Mapping[str, int]) -> int | None:
    """A ``participant`` cell as an index within the group: a name, or an index (an
    integer, or digits); None when it names no participant of the group.

    >>> [participant_index(v, {"a-0": 0, "a-1": 1}) for v in ("a-1", 0, "1", 1.0, 2, "b-0")]
    [1, 0, 1, 1, None, None]
    """
    if isinstance(value, str):
        if value in lookup:
            return lookup[value]
        value = int(value) if value.strip().isdigit() else None
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = int(value)
    elif isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)  # pandas reads an integer column with gaps as floats
    else:
        value = None
    return value if value is not None and 0 <= value < len(lookup) else None


def participant_keys(frame: pd.DataFrame, lookup: Mapping[str, int], where: str) -> list[int]:
    """The participant each row is about; a row naming none of the group's is an error."""
    keys, unknown = [], []
    for value in frame["participant"]:
        key = participant_index(value, lookup)
        if key is None:
            unknown.append(value)
        else:
            keys.append(key)
    if unknown:
        names = list(lookup)
        raise TraceError(
            f"{where}: column participant: {', '.join(map(repr, unknown[:5]))} name no participant of "
            f"the group (its names are {names[0]} .. {names[-1]}, its indices 0 .. {len(names) - 1})")
    return keys


def match_rows(fleet: pd.DataFrame, lookup: Mapping[str, int], where: str) -> list[int]:
    """The fleet row of each participant, in the group's order."""
    count = len(lookup)
    if "participant" not in fleet:
        if len(fleet) < count:
            raise TraceError(f"{where}: {len(fleet)} rows for the group's {count} participants "
                             "(row i is participant i; add rows, or lower the group's count)")
        return list(range(count))
    keys = participant_keys(fleet, lookup, where)
    names = list(lookup)
    repeated = [names[k] for k, n in sorted(Counter(keys).items()) if n > 1]
    if repeated:
        raise TraceError(f"{where}: column participant: more than one row for {', '.join(repeated[:5])}")
    missing = [names[i] for i in sorted(set(range(count)) - set(keys))]
    if missing:
        raise TraceError(f"{where}: no row for participant(s) {', '.join(missing[:5])} "
                         f"({len(fleet)} rows for the group's {count} participants)")
    row_of = {k: row for row, k in enumerate(keys)}
    return [row_of[i] for i in range(count)]


# -- the columns ------------------------------------------------------------------


def positive(frame: pd.DataFrame, column: str, where: str, allow_zero: bool = False,
             blanks: bool = False) -> np.ndarray:
    """A column as finite numbers > 0 (>= 0 with ``allow_zero``; empty cells as NaN with
    ``blanks``), or an error naming the column and the first bad row."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values) | ((values < 0) if allow_zero else (values <= 0))
    if blanks:
        bad &= ~frame[column].isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        expected = "a number >= 0" if allow_zero else "a number > 0"
        raise TraceError(f"{where}: column {column}: row {frame.index[row]} has "
                         f"{frame[column].iloc[row]!r}; expected {expected}")
    return values


def relative_speeds(rows: pd.DataFrame, unit: str, where: str) -> tuple[np.ndarray, float | None]:
    """Speeds in (0, 1] and, for an absolute unit, the fastest's seconds per sample.

    >>> relative_speeds(pd.DataFrame({"speed": [0.5, 0.25]}), "seconds_per_sample", "t")
    (array([0.5, 1. ]), 0.25)
    """
    values = positive(rows, "speed", where)
    if unit == "samples_per_s":
        return values / values.max(), float(1.0 / values.max())
    if unit == "seconds_per_sample":
        return values.min() / values, float(values.min())
    above = np.flatnonzero(values > 1.0)
    if above.size:
        row = int(above[0])
        raise TraceError(f"{where}: column speed: row {rows.index[row]} has {values[row]:g}; relative "
                         "speeds are in (0, 1] (for absolute rates set trace.speed_unit: "
                         "samples_per_s or seconds_per_sample)")
    return values, None


def participant_windows(windows: pd.DataFrame, rows: pd.DataFrame, period_s: float | None,
                        lookup: Mapping[str, int], where: str) -> list[Windows]:
    """Each participant's online windows, merged, repeating with its period."""
    if "period_s" in rows and period_s is not None:
        raise TraceError(f"{where}: give the period once: trace.period_s or the fleet's period_s column")
    keys = participant_keys(windows, lookup, where)
    starts = positive(windows, "start_s", where, allow_zero=True)
    ends = positive(windows, "end_s", where)
    empty = np.flatnonzero(starts >= ends)
    if empty.size:
        row = int(empty[0])
        raise TraceError(f"{where}: row {windows.index[row]}: start_s={starts[row]:g} is not before end_s={ends[row]:g}")
    periods = positive(rows, "period_s", where) if "period_s" in rows else np.full(len(lookup), period_s or ends.max())
    spans: list[list[tuple[float, float]]] = [[] for _ in lookup]
    for key, start, end in zip(keys, starts, ends):
        spans[key].append((float(start), float(end)))
    out = []
    for name, i in lookup.items():
        if not spans[i]:
            raise TraceError(f"{where}: participant {name} has no online window")
        merged = merge_windows(spans[i])
        if merged[-1][1] > periods[i]:
            raise TraceError(f"{where}: participant {name} has a window ending at {merged[-1][1]:g} s, "
                             f"after its period_s={periods[i]:g}")
        out.append(Windows(windows=tuple(merged), period_s=float(periods[i])))
    return out


def merge_windows(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, with overlapping or touching windows joined.

    >>> merge_windows([(50, 60), (0, 10), (5, 20), (20, 30)])
    [(0, 30), (50, 60)]
    """
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


# -- FedScale ---------------------------------------------------------------------


def fedscale_tables(capacity: str | Path, behave: str | Path | None, count: int, seed: int | None = None,
                    where: str = "fedscale") -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """FedScale's ``client_device_capacity`` (and ``client_behave_trace``) pickles as a
    fleet table in seconds per sample (and a windows table) for ``count`` participants.

    >>> # fleet, windows = fedscale_tables("client_device_capacity", "client_behave_trace", 100)
    >>> # fleet.to_csv("fleet.csv", index=False); windows.to_csv("windows.csv", index=False)
    """
    profiles = load_pickle(capacity, where)
    chosen = choose_clients(profiles, count, seed, capacity, where)
    fields = [fedscale_fields(profiles[c], ("computation", "communication"), capacity, c, where) for c in chosen]
    fleet = pd.DataFrame({
        "participant": range(count),
        "speed": [FEDSCALE_TRAIN_FACTOR * float(f["computation"]) / 1000.0 for f in fields],
        "bandwidth_mbps": [float(f["communication"]) * 1024 / 1e6 for f in fields],
        "source": [f"capacity:{c}" for c in chosen],
    })
    if behave is None:
        return fleet, None
    traces = load_pickle(behave, where)
    picked = choose_clients(traces, count, seed, behave, where)
    rows, periods = [], []
    for i, client in enumerate(picked):
        trace = fedscale_fields(traces[client], ("active", "inactive", "finish_time"), behave, client, where)
        finish = float(trace["finish_time"])
        periods.append(finish)
        rows += [(i, start, end) for start, end in fedscale_windows(trace, finish)]
    fleet["period_s"] = periods
    fleet["source"] = [f"{s} behave:{c}" for s, c in zip(fleet["source"], picked)]
    return fleet, pd.DataFrame(rows, columns=list(WINDOW_COLUMNS))


def fedscale_windows(trace: Mapping[str, Any], finish: float) -> list[tuple[float, float]]:
    """One client's ``[active[i], inactive[i])`` pairs, inside ``[0, finish_time]``; an
    ``active`` with no ``inactive`` after it stays online to the end of the trace.

    >>> fedscale_windows({"active": [0, 50, 90], "inactive": [20, 120]}, 100.0)
    [(0.0, 20.0), (50.0, 100.0), (90.0, 100.0)]
    """
    active, inactive = list(trace["active"]), list(trace["inactive"])
    ends = inactive[:len(active)] + [finish] * (len(active) - len(inactive))
    spans = [(max(0.0, float(a)), min(float(e), finish)) for a, e in zip(active, ends)]
    return [(a, e) for a, e in spans if a < e]


def load_pickle(path: str | Path, where: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise TraceError(f"{where}: file not found: {file}")
    try:
        with file.open("rb") as f:
            data = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as exc:
        raise TraceError(f"{where}: {file} is not a FedScale pickle: {exc}") from None
    if not isinstance(data, dict):
        raise TraceError(f"{where}: {file} holds a {type(data).__name__}; FedScale's traces are a dict by client id")
    return data


def choose_clients(mapping: Mapping[Any, Any], count: int, seed: int | None, path: str | Path,
                   where: str) -> list[Any]:
    """The first ``count`` client ids, or ``count`` drawn without replacement with ``seed``."""
    keys = list(mapping)
    if len(keys) < count:
        raise TraceError(f"{where}: {path} has {len(keys)} clients for the group's {count} participants")
    if seed is None:
        return keys[:count]
    return [keys[i] for i in np.random.default_rng(seed).choice(len(keys), count, replace=False)]


def fedscale_fields(entry: Any, fields: Sequence[str], path: str | Path, client: Any, where: str) -> Mapping[str, Any]:
    """One client's entry, which must hold ``fields``."""
    missing = [f for f in fields if not isinstance(entry, Mapping) or f not in entry]
    if missing:
        raise TraceError(f"{where}: {path}: client {client!r} has no {missing[0]!r}")
    return entry

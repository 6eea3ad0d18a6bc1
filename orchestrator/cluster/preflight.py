"""Pre-flight: do the run's participant processes fit where it runs? Resolves ``hosting: auto``.

A dedicated participant is a whole Python process with torch imported, a few hundred MB
(:data:`ACTOR_FOOTPRINT_BYTES`). Start more than the machine holds and Ray's memory
monitor kills workers minutes into the run; ask for more CPUs or GPUs than a fixed Ray
has and the actors wait until the start-up timeout. So before a local Ray starts, or
right after joining a running one, this module sets what the participants' processes
would ask for (CPUs and GPUs as their groups request, memory as the footprint per
process) against what is there, turns every ``hosting: auto`` group into ``dedicated``
or a pool of workers, and refuses at once, with the numbers and the fix, explicit
hosting that cannot fit.

:func:`plan` is the whole decision and pure: the capacity comes in as a :class:`Capacity`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from orchestrator.cluster.fits import process_resources
from orchestrator.config import ConfigError, Group, PlacementGroupOption, RunConfig

ACTOR_FOOTPRINT_BYTES = 270 * 2**20
"""What one participant process (a dedicated actor, or a pool worker) costs the machine.

Measured with ``ray.init(num_cpus=2)`` on the 2-core, 24 GB machine: 12 ``Participant``
actors of ``examples/pool.yaml`` (digits, ~13 examples each, MLP [64, 128]), after set-up
and one task, held RSS 393 MiB, USS 252 MiB and PSS 261 MiB each, and the machine's
MemAvailable fell by ~235 MiB per actor (two runs). A pool worker is the same process:
256 MiB USS serving one participant, 274-283 MiB after serving 100 (64 cached). Before the
participant's imports were made lazy the same actors held 511 MiB RSS, 340 MiB PSS, and
MemAvailable fell by ~425 MiB each. Bigger models and data add to it; a larger
``resources.memory`` counts instead."""

OBJECT_STORE_SHARE = 0.3
"""Share of memory a local Ray gives its object store by default (Ray's
``DEFAULT_OBJECT_STORE_MEMORY_PROPORTION``); the rest is what workers can use."""

OBJECT_STORE_CAP_BYTES = 200 * 10**9
"""Ray's default cap on the object store (``DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES``)."""


class HostingError(ConfigError):
    """The participants cannot fit where the run goes; the message has the numbers and the fix."""


class Plan(NamedTuple):
    """The config with every group's hosting resolved, and one line saying what and why."""

    config: RunConfig
    line: str


@dataclass(frozen=True)
class Capacity:
    """What participant processes may use where the run goes."""

    cpus: float
    gpus: float
    memory: float
    """Bytes Ray workers can use."""
    where: str = "this machine"
    cpus_fixed: bool = True
    """False for a local Ray this run starts without ``ray.num_cpus``: it gets as many
    logical CPUs as the participants ask for, so more than the cores only slows them down.
    Memory and GPUs are hard limits either way."""


@dataclass(frozen=True)
class Need:
    """What some participant processes ask for."""

    processes: int = 0
    cpus: float = 0.0
    gpus: float = 0.0
    memory: float = 0.0

    def __add__(self, other: Need) -> Need:
        return Need(self.processes + other.processes, self.cpus + other.cpus,
                    self.gpus + other.gpus, self.memory + other.memory)


def processes(group: Group) -> int:
    """How many processes host ``group``: a pool's workers, else one per participant
    (an unresolved ``auto`` group counts as dedicated, what it asks for at most)."""
    return group.pool_size if group.hosting == "pool" else group.count


def need(group: Group, count: int, footprint: float = ACTOR_FOOTPRINT_BYTES) -> Need:
    """What ``count`` processes of ``group`` ask for: the group's resources each, and the
    footprint of memory each (or the reserved ``resources.memory``, if larger); per process,
    what :func:`orchestrator.cluster.fits.placement_problem` checks against each node."""
    each = process_resources(group)
    return Need(count, each.get("CPU", 0.0) * count, each.get("GPU", 0.0) * count,
                max(footprint, each.get("memory", 0.0)) * count)


def shortfall(need: Need, capacity: Capacity, soft: bool = True) -> str | None:
    """Why ``need`` does not fit ``capacity`` ("would need X, where has Y"), or None.
    ``soft``: CPUs a local Ray would oversubscribe count as short too."""
    if need.memory > capacity.memory:
        return (f"would need ~{_gb(need.memory)} of memory, {capacity.where} has "
                f"~{_gb(capacity.memory)} for Ray workers")
    if need.gpus > capacity.gpus + 1e-9:
        return f"would ask for {need.gpus:g} GPUs, {capacity.where} has {capacity.gpus:g}"
    if need.cpus > capacity.cpus + 1e-9 and (soft or capacity.cpus_fixed):
        return f"would ask for {need.cpus:g} CPUs, {capacity.where} has {capacity.cpus:g}"
    # More processes than CPUs: each imports torch, so start-up grows with the count
    # (benchmarks/scale.py on 2 cores: 16 dedicated took 30.6 s, a pool of 2 8.9 s)
    if soft and need.processes > capacity.cpus + 1e-9:
        return (f"would start {need.processes} processes (each imports torch) on the "
                f"{capacity.cpus:g} CPUs {capacity.where} has")
    return None


def dedicated_only(group: Group, config: RunConfig) -> str | None:
    """Why ``group`` must have a process per participant, or None."""
    if group.placement == "pack" or isinstance(group.placement, PlacementGroupOption):
        return "its placement reserves one placement-group bundle per participant"
    return None


# -- the decision ----------------------------------------------------------------------


def plan(config: RunConfig, capacity: Capacity, footprint: float = ACTOR_FOOTPRINT_BYTES) -> Plan:
    """Resolve every ``hosting: auto`` group against ``capacity``; raise :class:`HostingError`
    when explicit hosting, or every choice, cannot fit.

    An auto group stays dedicated while all the run's processes fit; otherwise the
    largest auto groups become pools, one by one, until they do.

    >>> from orchestrator.config import load_config
    >>> raw = {"dataset": {"name": "digits"}, "groups": [{"name": "site", "count": 100}]}
    >>> plan(load_config(raw), Capacity(cpus=2, gpus=0, memory=16e9)).line.split(" (")[0]
    'hosting: group site -> pool of 2 workers'
    """
    fixed = [g for g in config.groups if g.hosting != "auto"]
    base = sum((need(g, processes(g), footprint) for g in fixed), Need())
    if shortfall(base, capacity, soft=False):
        raise HostingError(_fixed_refusal(config, fixed, base, capacity, footprint))
    auto = [g for g in config.groups if g.hosting == "auto"]
    must = {g.name: why for g in auto if (why := dedicated_only(g, config))}
    pooled = _choose_pooled(auto, must, base, capacity, footprint)
    sizes = _pool_sizes([g for g in auto if g.name in pooled], auto, base, capacity, footprint)
    groups = []
    for group in config.groups:
        if group.name in sizes:  # pool workers always restart: a dedicated max_restarts has no say
            restarts = min(group.resources.max_restarts, 0)
            resources = group.resources.model_copy(update={"max_restarts": restarts})
            group = group.model_copy(update={"hosting": "pool", "workers": sizes[group.name], "resources": resources})
        elif group.hosting == "auto":
            group = group.model_copy(update={"hosting": "dedicated"})
        groups.append(group)
    resolved = config.model_copy(update={"groups": groups})
    return Plan(resolved, _line(resolved, capacity, footprint))


def _choose_pooled(auto: list[Group], must: dict[str, str], base: Need, capacity: Capacity,
                   footprint: float) -> set[str]:
    """The auto groups to pool: none if all fit, else the largest first until the rest
    fits; all of them if only oversubscribed local CPUs stay short."""
    candidates = sorted((g for g in auto if g.name not in must), key=lambda g: -g.count)

    def total(pooled: set[str]) -> Need:
        return base + sum((need(g, 1 if g.name in pooled else g.count, footprint) for g in auto), Need())

    for k in range(len(candidates) + 1):
        pooled = {g.name for g in candidates[:k]}
        if shortfall(total(pooled), capacity) is None:
            return pooled
    pooled = {g.name for g in candidates}
    short = shortfall(total(pooled), capacity, soft=False)
    if short is None:
        return pooled
    if must:
        name, why = next(iter(must.items()))
        raise HostingError(
            f"hosting: group {name} needs a dedicated actor per participant ({why}), and then the "
            f"run's {total(pooled).processes} processes {short}. Run fewer participants, or join a "
            "larger Ray cluster (ray.address).")
    raise HostingError(
        f"hosting: even with every group pooled on one worker, the run's {total(pooled).processes} "
        f"processes {short}. Ask for less per participant (resources), or run where there is more.")


def _pool_sizes(pooled: list[Group], auto: list[Group], base: Need, capacity: Capacity,
                footprint: float) -> dict[str, int]:
    """Workers per pooled group: what is left after the dedicated actors, shared evenly,
    at most one per core and per participant, at least one."""
    names = {g.name for g in pooled}
    dedicated = sum((need(g, g.count, footprint) for g in auto if g.name not in names), Need())
    used = base + dedicated
    share = max(1, len(pooled))
    left = Need(0, (capacity.cpus - used.cpus) / share, (capacity.gpus - used.gpus) / share,
                (capacity.memory - used.memory) / share)
    sizes = {}
    for group in pooled:
        one = need(group, 1, footprint)
        limits = [group.count, max(1, int(capacity.cpus)), int(left.memory // one.memory)]
        limits += [int(left.cpus / one.cpus + 1e-9)] if one.cpus else []
        limits += [int(left.gpus / one.gpus + 1e-9)] if one.gpus else []
        sizes[group.name] = max(1, min(limits))
    return sizes


def _fixed_refusal(config: RunConfig, fixed: list[Group], base: Need, capacity: Capacity,
                   footprint: float) -> str:
    """The message for explicit hosting that cannot fit: which groups, the numbers, the fix."""
    short = shortfall(base, capacity, soft=False)
    dedicated = [g for g in fixed if g.hosting == "dedicated"]
    what = ", ".join(f"{processes(g)} {'dedicated actors' if g.hosting == 'dedicated' else 'pool workers'} "
                     f"of group {g.name}" for g in fixed)
    movable = {g.name for g in dedicated if not dedicated_only(g, config)}
    pooled = sum((need(g, 1 if g.name in movable else processes(g), footprint) for g in fixed), Need())
    pinned = [g for g in dedicated if g.name not in movable]
    if movable and shortfall(pooled, capacity, soft=False) is None:
        names = ", ".join(g.name for g in dedicated if g.name in movable)
        fix = f"Set hosting: pool (or auto) for group {names}: a few workers then serve its participants in turn."
    elif pinned:
        fix = (f"Group {pinned[0].name} must stay dedicated ({dedicated_only(pinned[0], config)}): run "
               "fewer participants, or join a larger Ray cluster (ray.address).")
    elif not dedicated:
        fix = "Set fewer workers."
    else:
        fix = "Ask for less per participant (resources), or run where there is more."
    each = f" (~{_gb(footprint)} per process)" if base.memory > capacity.memory else ""
    return f"hosting: {what} {short}{each}. {fix}"


def _line(config: RunConfig, capacity: Capacity, footprint: float) -> str:
    """``hosting: group a -> dedicated; group b -> pool of 2 workers (why) [totals]``.

    The reasons come from the resolved config and the capacity alone, so planning a
    resolved config again (``fedray run`` resolves, then the run checks) says the same."""
    everyone = sum((need(g, g.count, footprint) for g in config.groups), Need())
    too_many = shortfall(everyone, capacity)
    parts = []
    for group in config.groups:
        n = group.pool_size
        if group.hosting == "dedicated":
            how, why = "dedicated", dedicated_only(group, config)
        else:
            how = f"pool of {n} worker{'s' * (n != 1)}"
            why = f"{everyone.processes} dedicated actors {too_many}" if too_many else "as set"
        parts.append(f"group {group.name} -> {how}" + (f" ({why})" if why else ""))
    total = sum((need(g, processes(g), footprint) for g in config.groups), Need())
    summary = (f"{total.processes} processes on {capacity.where}: ~{_gb(total.memory)} of "
               f"~{_gb(capacity.memory)} for Ray workers, {total.cpus:g} of {capacity.cpus:g} CPUs")
    if total.gpus:
        summary += f", {total.gpus:g} of {capacity.gpus:g} GPUs"
    if total.cpus > capacity.cpus + 1e-9:
        summary += " (oversubscribed)"
    return "hosting: " + "; ".join(parts) + f" [{summary}]"


def _gb(nbytes: float) -> str:
    gb = nbytes / 1e9
    return f"{nbytes / 1e6:.0f} MB" if gb < 1 else f"{gb:.1f} GB" if gb < 10 else f"{gb:.0f} GB"


# -- where the run goes ------------------------------------------------------------------


def before_ray(config: RunConfig) -> Plan | None:
    """The plan against this machine for a run that will start its own local Ray, before
    Ray starts; None when the run joins a running Ray (``ray.address``, or Ray already up),
    whose resources :func:`on_ray` reads once connected."""
    import ray

    if config.ray.address is not None or ray.is_initialized():
        return None
    capacity = machine_capacity(config)
    result = plan(config, capacity)
    problem = gpu_caps_problem(result.config, int(capacity.gpus), card_memory_gb())
    if problem:
        raise HostingError(f"GPU memory caps: {problem}")
    return result


def gpu_caps_problem(config: RunConfig, gpus: int, card_gb: float | None) -> str | None:
    """Whether the GPU processes' memory caps (``gpu_memory_gb``, else their ``num_gpus``
    share) fit on the cards Ray would place them on; None when they do, or when the card
    size is unknown.

    >>> from orchestrator.config import load_config
    >>> raw = {"dataset": {}, "groups": [{"name": "a", "count": 2, "hosting": "dedicated",
    ...        "resources": {"num_gpus": 0.5, "gpu_memory_gb": 50}}]}
    >>> gpu_caps_problem(load_config(raw), gpus=1, card_gb=80.0).split(":")[0]
    'card 0 (80 GB) holds a-0 (50 GB), a-1 (50 GB)'
    """
    from actors.participant.gpu_memory import caps_fit

    requests = [(f"{g.name}-{i}", g.resources.num_gpus, g.resources.gpu_memory_gb)
                for g in config.groups if g.resources.num_gpus for i in range(processes(g))]
    if not requests or not gpus or card_gb is None:
        return None
    return caps_fit(requests, card_gb, gpus)


def card_memory_gb() -> float | None:
    """The smallest local GPU's memory in GB, from ``nvidia-smi`` (no torch import), or
    None without one."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return min(float(line) for line in out.split()) / 1024  # MiB
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def on_ray(config: RunConfig) -> Plan:
    """The plan against the Ray this process is connected to."""
    return plan(config, ray_capacity())


def machine_capacity(config: RunConfig) -> Capacity:
    """This machine as a local Ray would see it: its cores (or ``ray.num_cpus``), its GPUs
    (or ``ray.num_gpus``), and its memory less Ray's object store."""
    gpus = config.ray.num_gpus
    if gpus is None:  # detected only when asked for: it may import Ray's accelerator code
        gpus = local_gpus() if any(g.resources.num_gpus for g in config.groups) else 0.0
    total = total_memory()
    store = min(OBJECT_STORE_SHARE * total, OBJECT_STORE_CAP_BYTES)
    return Capacity(cpus=config.ray.num_cpus or float(os.cpu_count() or 1), gpus=float(gpus),
                    memory=total - store, where="this machine", cpus_fixed=config.ray.num_cpus is not None)


def ray_capacity() -> Capacity:
    """The connected Ray's totals (not what is free this moment: actors still being
    released must not turn a run that fits into a refusal); inside a placement group that
    captures its children (a ``fedray tune`` trial), what that group holds beyond this
    process's own share, since every participant is placed in it."""
    import ray
    from ray.util import get_current_placement_group

    res = ray.cluster_resources()
    group = get_current_placement_group()
    if group is not None:  # memory is not reserved by bundles: the cluster's counts
        held = ray.get_runtime_context().get_assigned_resources()
        total = {k: sum(b.get(k, 0.0) for b in group.bundle_specs) - held.get(k, 0.0) for k in ("CPU", "GPU")}
        return Capacity(cpus=total["CPU"], gpus=total["GPU"], memory=res.get("memory", 0.0),
                        where="the trial's placement group", cpus_fixed=True)
    return Capacity(cpus=res.get("CPU", 0.0), gpus=res.get("GPU", 0.0), memory=res.get("memory", 0.0),
                    where="the Ray cluster", cpus_fixed=True)


def total_memory() -> float:
    """Physical memory, or the container's limit if lower (cgroup v2, then v1)."""
    total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, float(text))
    return total


def local_gpus() -> float:
    """GPUs a local Ray would find: the NVIDIA devices present, as many as
    ``CUDA_VISIBLE_DEVICES`` leaves visible."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        count = manager.get_current_node_num_accelerators()
        visible = manager.get_current_process_visible_accelerator_ids()
    except Exception:  # Ray's private API moved: count the driver's device entries
        count = len(list(Path("/proc/driver/nvidia/gpus").glob("*")))
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        visible = None if env is None else [d for d in env.split(",") if d.strip()]
    return float(count if visible is None else min(count, len(visible)))

"""``fedray profile CONFIG``: measure each participant, suggest an allocation.

Starts the participants exactly as a run would (same resources and placement), gives
each a few real training tasks from the initial model, and reports per participant its
samples/s (task time includes any simulated slowdown), its task time and its actor's
resident memory. From the per-group task times it suggests what equalises them: the
local steps each group should do with its current CPUs, or the CPUs it would need
for its current work. ``--write CONFIG_OUT`` saves the config with the suggested local
steps applied, ready for ``fedray run``.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import yaml

from actors.participant.participant import Participant
from orchestrator.config import RunConfig, load_config
from orchestrator.loop.adaptive import base_steps
from strategies.types import GlobalState, Instructions


def samples_per_task(num_examples: int, batch_size: int, local_epochs: int, local_steps: int | None) -> int:
    """Exactly how many samples one local task touches (the last batch of an epoch is short)."""
    per_epoch = max(1, math.ceil(num_examples / batch_size))
    steps = base_steps(num_examples, batch_size, local_epochs, local_steps)
    full_epochs, rest = divmod(steps, per_epoch)
    return full_epochs * num_examples + min(rest * batch_size, num_examples)


def _rss(participant: Any) -> int:
    import psutil

    return psutil.Process().memory_info().rss


def measure(config: RunConfig, tasks: int = 3) -> pd.DataFrame:
    """One row per participant: where it ran, samples/s, task seconds, memory."""
    from orchestrator.cluster.connect import connect_ray
    from orchestrator.cluster.fits import check_placement
    from orchestrator.cluster.placement import Placements
    from orchestrator.cluster.specs import participant_specs
    from orchestrator.loop.run import Orchestrator

    driver = Orchestrator(config)
    started_ray = connect_ray(config)
    check_placement(config.groups, ray.nodes())
    placements = Placements(config.groups)
    handles, specs = [], []
    try:
        for spec, group in participant_specs(driver.config, driver.run_id):
            options = placements.actor_options(group, spec.index_in_group)
            handles.append(ray.remote(Participant).options(**options).remote(spec))
            specs.append((spec, group))
        infos = ray.get([h.describe.remote() for h in handles])
        params = ray.get(handles[0].initial_parameters.remote())
        state = ray.put(GlobalState(0, np.asarray(params, np.float32), infos[0]["layout"]))
        pending: dict[ray.ObjectRef, int] = {}
        for i, handle in enumerate(handles):  # an actor runs its tasks one after another
            for t in range(tasks):
                pending[handle.train.remote(state, Instructions(task_id=i * tasks + t, seed=t))] = i
        seconds: dict[int, list[float]] = {i: [] for i in range(len(handles))}
        samples: dict[int, float] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            update = ray.get(done[0])
            seconds[i].append(max(update.train_seconds, update.simulated_seconds or 0.0))
            samples[i] = update.metrics["samples"]
        memory = ray.get([h.__ray_call__.remote(_rss) for h in handles])
    finally:
        for handle in handles:
            ray.kill(handle, no_restart=True)
        placements.release()
        if started_ray:
            ray.shutdown()
    rows = []
    for i, ((spec, group), info) in enumerate(zip(specs, infos)):
        times = seconds[i][1:] or seconds[i]  # the first task also pays for warm-up
        task_s = statistics.median(times)
        rows.append({
            "participant": spec.name, "group": group.name, "num_cpus": group.resources.num_cpus,
            "num_gpus": group.resources.num_gpus, "device": info["device"],
            "node": str(info.get("node_id", ""))[:8], "num_examples": info["num_examples"],
            "samples_per_task": int(samples[i]),
            "task_seconds": task_s, "samples_per_s": samples[i] / task_s,
            "memory_mb": memory[i] / 2**20,
        })
    return pd.DataFrame(rows)


def suggest(config: RunConfig, measured: pd.DataFrame) -> pd.DataFrame:
    """Per group: the local steps (same CPUs) or CPUs (same work) that match the fastest group."""
    per_group = measured.groupby("group", sort=False).agg(
        task_seconds=("task_seconds", "median"), num_examples=("num_examples", "median"))
    fastest = per_group.task_seconds.min()
    rows = []
    for group in config.groups:
        g = per_group.loc[group.name]
        train = group.train
        steps = base_steps(int(g.num_examples), train.batch_size, train.local_epochs, train.local_steps)
        ratio = g.task_seconds / fastest
        rows.append({
            "group": group.name, "task_seconds": g.task_seconds, "slower_by": ratio,
            "local_steps_now": steps, "suggest_local_steps": max(1, round(steps / ratio)),
            "num_cpus_now": group.resources.num_cpus,
            "suggest_num_cpus": math.ceil(group.resources.num_cpus * ratio * 4) / 4,
        })
    return pd.DataFrame(rows).set_index("group")


def apply_suggestion(config: RunConfig, suggestion: pd.DataFrame) -> dict[str, Any]:
    """The config as a mapping with each group's suggested ``local_steps`` set."""
    raw = config.model_dump(mode="json")
    for group in raw["groups"]:
        group["train"]["local_steps"] = int(suggestion.loc[group["name"], "suggest_local_steps"])
    return raw


# ------------------------------------------------------------------ command line
def add_parser(sub: Any) -> None:
    """``fedray profile CONFIG [--tasks N] [--write OUT.yaml]``."""
    cmd = sub.add_parser("profile", help="measure each participant's samples/s and memory")
    cmd.add_argument("config", help="YAML run config")
    cmd.add_argument("--tasks", type=int, default=3, help="training tasks per participant")
    cmd.add_argument("--write", help="write the config with the suggested local_steps here")
    cmd.add_argument("--address", help="profile on a running Ray cluster ('auto' or ray://...)")
    cmd.add_argument("--calibration", help="instead: write a calibration file (JSON) here, each group "
                     "measured at each --allocations num_cpus, for clock: simulated to price tasks with")
    cmd.add_argument("--allocations", nargs="*", default=[], help="candidate num_cpus: '0.5,1,2' for every "
                     "group, or 'GROUP=0.5,1' per group (each group's own num_cpus is always measured)")
    cmd.set_defaults(func=command)


def command(args: Any) -> int:
    config = load_config(args.config)
    if args.address:
        config = config.model_copy(update={"ray": config.ray.model_copy(update={"address": args.address})})
    if args.calibration:
        from orchestrator.tools.calibrate import parse_allocations, write_calibration

        return write_calibration(config, parse_allocations(args.allocations, config), args.calibration)
    started = time.perf_counter()
    try:
        measured = measure(config, tasks=max(1, args.tasks))
    except RuntimeError as exc:
        print(f"fedray: {exc}", file=sys.stderr)
        return 1
    suggestion = suggest(config, measured)
    pd.set_option("display.width", 160)
    print(f"\nmeasured ({args.tasks} tasks per participant, {time.perf_counter() - started:.0f}s)")
    print(measured.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("\nsuggested allocation (equal expected task time): fewer local steps for the slow, "
          "or more CPUs for the same work")
    print(suggestion.to_string(float_format=lambda v: f"{v:.2f}"))
    if args.write:
        Path(args.write).write_text(yaml.safe_dump(apply_suggestion(config, suggestion), sort_keys=False))
        print(f"\nwrote {args.write} (suggested local_steps applied); run it with: fedray run {args.write}")
    return 0

"""``fedray tune CONFIG --search SEARCH.yaml``: a search over resource allocations.

Each trial is a full fedray run of CONFIG with the trial's values written into it (per
group ``num_cpus``/``num_gpus``, ``local_epochs``, ``batch_size``, schedule
``concurrency``/``buffer_size``, any dotted path). On the wall clock, Ray Tune runs the
trials and reserves each a placement group sized for its participants
(``tune.with_resources`` with a ``PlacementGroupFactory``: one bundle for the trial's
driver, one for its participants); Tune makes the trial's actors inherit that group, so
the participants run inside it. Under ``clock: simulated`` the allocation is priced, not
held, and the trials run in this process (:mod:`orchestrator.tools.simulated_search`).

The objective is seconds to the target of the run's ``task.metric`` (``target_accuracy``,
or ``target`` for any metric: r2, mse, macro_f1, ...) by the run's clock: wall seconds, or
simulated seconds. A trial that never gets there is ranked after every one that does,
by its best value of the metric. The other objective is the metric reached within
``budget_s``. Results: ``trials.csv``/``trials.parquet`` sorted best first, and
``best.yaml``, the winning run config, ready for ``fedray run``.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from orchestrator.cluster.capacity import Capacity
from orchestrator.config import ConfigError, RunConfig, TuneSearch, load_config
from orchestrator.config.errors import flatten_errors
from orchestrator.config.schedule import SCHEDULE_MODES
from orchestrator.tools.trial_plan import (
    TrialPlan,
    grid_points,
    hosting_capacity,
    local_cpus,
    plan_trial,
)
from orchestrator.tools.trials import run_trial


def load_search(path: str | Path) -> TuneSearch:
    """Parse and validate a search file; errors name the field."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"search file not found: {path}")
    try:
        return TuneSearch.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        raise ConfigError(f"invalid search settings in {path}:\n{flatten_errors(exc, root=TuneSearch)}") from None


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    """Write ``value`` at a dotted ``path``; ``groups.NAME`` picks the group by name.

    >>> raw = {"groups": [{"name": "site", "train": {"batch_size": 32}}]}
    >>> set_path(raw, "groups.site.train.batch_size", 64); raw["groups"][0]["train"]
    {'batch_size': 64}
    """
    node, key = _setting(raw, path)
    node[key] = value


def get_path(raw: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path``, addressed as :func:`set_path` does.

    >>> get_path({"groups": [{"name": "site", "resources": {"num_cpus": 2}}]}, "groups.site.resources.num_cpus")
    2
    """
    node, key = _setting(raw, path)
    return node[key]


def _setting(raw: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The mapping that holds the setting at ``path``, and its key; errors name the path."""
    parts = path.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):  # the groups list: address a group by its name
            match = [g for g in node if g.get("name") == part]
            if not match:
                names = [g.get("name") for g in node]
                raise ConfigError(f"space.{path}: no group named {part!r}; groups: {names}")
            node = match[0]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise ConfigError(f"space.{path}: {'.'.join(parts[:i + 1])!r} is not in the run config")
    if not isinstance(node, dict) or parts[-1] not in node:
        raise ConfigError(f"space.{path}: {parts[-1]!r} is not a setting there")
    return node, parts[-1]


def trial_config(base: RunConfig, search: TuneSearch, values: dict[str, Any]) -> RunConfig:
    """The base config with one trial's values and the search's stop rule applied."""
    raw = copy.deepcopy(base.model_dump(mode="json"))
    for path, value in values.items():
        set_path(raw, path, value)
    if "schedule.mode" in values and values["schedule.mode"] in SCHEDULE_MODES:  # the base mode's own
        allowed = SCHEDULE_MODES[values["schedule.mode"]].model_fields  # settings do not carry over
        raw["schedule"] = {k: v for k, v in raw["schedule"].items() if k in allowed}
    metric, target = search_target(base, search)
    raw["stop"] = {"max_aggregations": search.max_aggregations, "max_updates": None,
                   "max_wall_s": search.budget_s + search.startup_s, "target_accuracy": None, "target": None}
    if search.to_target:
        raw["stop"]["target_accuracy" if metric == "accuracy" and search.target is None else "target"] = target
    raw["ray"] = {"address": None, "num_cpus": None, "num_gpus": None}
    for group in raw["groups"]:
        group["placement"] = "default"  # the trial's own placement group decides where
    return load_config(raw)


def search_target(base: RunConfig, search: TuneSearch) -> tuple[str, float]:
    """The metric trials are scored on (the run's ``task.metric``) and its target:
    ``target``, else ``target_accuracy`` when the metric is accuracy."""
    metric = base.task.metric_name
    if search.target is not None:
        return metric, search.target
    if metric != "accuracy" and search.to_target:
        raise ConfigError(f"tune: the run's task.metric is {metric!r}: give the search a target for it "
                          "(target_accuracy applies to accuracy)")
    return metric, float(search.target_accuracy or 0.0)


def search_space(search: TuneSearch) -> dict[str, Any]:
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice,
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
            "randint": lambda v: tune.randint(*v)}
    return {path: make[kind](values) for path, spec in search.space.items() for kind, values in spec.items()}


def _resources(plans: Any):
    """A function of the trial's values: its placement-group factory (a pruned trial gets
    the driver's bundle only, and ends at once)."""
    from ray.tune import PlacementGroupFactory

    def factory(values: dict[str, Any]) -> PlacementGroupFactory:
        trial = plans(values)
        return PlacementGroupFactory(trial.bundles[:1] if trial.pruned else trial.bundles, strategy="PACK")

    return factory


def check_search(config: RunConfig, search: TuneSearch, simulated: bool | None = None) -> list[RunConfig]:
    """A typo in a path, a bad value anywhere in a grid, or (``simulated``, default: the
    config's clock) a setting simulated trials do not price fails here, before any trial:
    a trial config per value checked."""
    from orchestrator.tools.simulated_search import check_priced

    if config.clock == "simulated" if simulated is None else simulated:
        check_priced(search)
    elif search.objective == "cost_to_target":
        raise ConfigError("objective cost_to_target: trials are costed by the CPU- and GPU-seconds their "
                          "tasks reserve in simulated time; give --calibration")
    return [trial_config(config, search, values) for values in _values_to_check(search)]


def concurrent_trials(search: TuneSearch) -> int:
    """Wall-clock trials one at a time unless the search says otherwise: trials sharing a
    machine would slow each other's seconds to the target."""
    return search.max_concurrent_trials or 1


def run_search(config: RunConfig, search: TuneSearch, out: Path, keep: int = 1) -> pd.DataFrame:
    """Run every trial; return the table sorted best first (also written under ``out``).

    Simulated trials run in this process, one after another on warm pool workers
    (:mod:`orchestrator.tools.simulated_search`; ``keep``: how many of the best must be
    exact, the rest stop once they cannot beat them); wall-clock trials run under Ray Tune,
    each in its own placement group."""
    from orchestrator.cluster.connect import ray_for
    from orchestrator.tools.simulated_search import computing_only, run_simulated_search

    checked = check_search(config, search)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    mode = "min" if search.to_target else "max"
    if config.clock == "simulated":
        with ray_for(computing_only(checked[0])):
            table = run_simulated_search(config, search, out, keep)
    else:
        table = _tune_search(config, search, out, mode)
    return _write_results(table, config, search, out, ascending=mode == "min")


def _tune_search(config: RunConfig, search: TuneSearch, out: Path, mode: str) -> pd.DataFrame:
    """Wall-clock trials under Ray Tune, one at a time; one row per trial."""
    import ray
    from ray import tune

    from orchestrator.cluster.warm_workers import WARM

    WARM.release()  # trials run in Tune's processes: this one's idle pool workers would hold their CPUs
    started_ray = not ray.is_initialized()
    hosting = hosting_capacity(config, search)
    if started_ray:
        trials = (trial_config(config, search, values) for values in grid_points(search))
        ray.init(address="local", num_cpus=local_cpus(trials, search, hosting),
                 include_dashboard=False, logging_level="WARNING")

    def plans(values: dict[str, Any]) -> TrialPlan:
        return plan_trial(trial_config(config, search, values), search.driver_cpus, hosting, cluster)

    def trainable(values: dict[str, Any]) -> dict[str, Any]:
        plan = plans(values)
        if plan.pruned:  # ranked after every trial that ran
            return {"objective": math.inf if mode == "min" else -math.inf, "reached": False, "pruned": plan.pruned}
        # reuses the trial's Ray connection
        return run_trial(plan.config, search, out / "runs" / tune.get_context().get_trial_id())

    try:
        cluster = Capacity.from_ray_nodes(ray.nodes())
        tuner = tune.Tuner(
            tune.with_resources(trainable, _resources(plans)),
            param_space=search_space(search),
            tune_config=tune.TuneConfig(metric="objective", mode=mode, num_samples=search.num_samples,
                                        max_concurrent_trials=concurrent_trials(search)),
            run_config=tune.RunConfig(name="search", storage_path=str(out / "tune"), verbose=0),
        )
        results = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    table = results.get_dataframe()
    if table.empty or "objective" not in table:
        errors = [r.error for r in results if r.error is not None]
        raise RuntimeError(f"no trial finished; first error: {errors[0] if errors else 'unknown'}")
    return table.rename(columns={f"config/{p}": p for p in search.space})


def _write_results(table: pd.DataFrame, config: RunConfig, search: TuneSearch, out: Path,
                   ascending: bool) -> pd.DataFrame:
    """``trials.csv``/``.parquet`` sorted best first, and ``best.yaml``."""
    keep = ["trial_id", *search.space, "objective", "reached", "time_to_target", "metric",
            *(c for c in table if c.startswith("best_")), "num_aggregations", "startup_seconds",
            "cpu_seconds", "gpu_seconds", "pareto", "wall_seconds", "run_dir", "pruned", "stopped_early"]
    order = ["objective", *(["cpu_seconds", "gpu_seconds"] if "cpu_seconds" in table else [])]  # ties: cheaper first
    table = table[[c for c in keep if c in table]].sort_values(order, ascending=[ascending, True, True][:len(order)])
    table = table.reset_index(drop=True)
    if "pruned" in table and table.pruned.notna().all():
        raise RuntimeError("every trial was pruned; first: " + table.pruned.iloc[0])
    table.to_csv(out / "trials.csv", index=False)
    table.to_parquet(out / "trials.parquet", index=False)
    best = {p: plain(table.iloc[0][p]) for p in search.space}
    best_config = trial_config(config, search, best).model_dump(mode="json")
    best_config["stop"] = config.stop.model_dump(mode="json")  # back to the user's own stop rule
    best_config["ray"] = config.ray.model_dump(mode="json")
    (out / "best.yaml").write_text(yaml.safe_dump(best_config, sort_keys=False))
    return table


def _values_to_check(search: TuneSearch) -> list[dict[str, Any]]:
    """A first point (the first grid/choice value, a range's middle), then every other
    grid/choice value of each path in turn, the rest as in the first point."""
    first = {p: (v[0] if k in ("grid", "choice") else (v[0] + v[1]) / 2 if k != "randint" else v[0])
             for p, spec in search.space.items() for k, v in spec.items()}
    others = [first | {p: value} for p, spec in search.space.items() for k, v in spec.items()
              if k in ("grid", "choice") for value in v[1:]]
    return [first, *others]


def plain(value: Any) -> Any:
    """numpy scalars -> Python, so YAML stays readable."""
    return value.item() if hasattr(value, "item") else value


def margin_line(table: pd.DataFrame, search: TuneSearch) -> str:
    """Best against worst of the trials that ran, in the objective's own units."""
    ran = table[table.pruned.isna()] if "pruned" in table else table
    best, worst = ran.iloc[0], ran.iloc[-1]
    metric = str(best.get("metric", "accuracy"))
    if not search.to_target:
        return (f"best trial {best.trial_id}: {metric} {abs(best.objective):.3f} within {search.budget_s:g}s; "
                f"worst {worst.trial_id}: {abs(worst.objective):.3f} "
                f"(better by {best.objective - worst.objective:.3f})")
    target = search.target if search.target is not None else search.target_accuracy

    by_cost = search.objective == "cost_to_target"

    def text(row: pd.Series) -> str:
        if bool(row.reached):
            paid = f" for {row.objective:.3g} CPU-seconds" if by_cost else ""
            return f"{row.time_to_target:.1f}s to {metric} {target}{paid}"
        return f"did not reach {target} in {search.budget_s:g}s (best {row[f'best_{metric}']:.3f})"

    line = f"best trial {best.trial_id}: {text(best)}; worst {worst.trial_id}: {text(worst)}"
    if by_cost and bool(best.reached) and bool(worst.reached):
        line += f"; the best is {worst.objective / best.objective:.2f}x cheaper"
    elif bool(best.reached) and bool(worst.reached):
        line += (f"; the best is {worst.time_to_target - best.time_to_target:.3g}s "
                 f"({worst.time_to_target / best.time_to_target:.2f}x) faster")
    return line


# ------------------------------------------------------------------ command line
def add_parser(sub: Any) -> None:
    """``fedray tune CONFIG --search SEARCH.yaml [--out DIR]``."""
    cmd = sub.add_parser("tune", help="Ray Tune over resources, local work and schedule")
    cmd.add_argument("config", help="YAML run config (the base every trial modifies)")
    cmd.add_argument("--search", required=True, help="YAML search space and objective")
    cmd.add_argument("--out", help="results directory (default: runs/tune-NAME-TIMESTAMP)")
    cmd.add_argument("--calibration", help="score trials in simulated seconds priced by this file "
                     "(fedray profile --calibration): sets clock: simulated. A file that does not "
                     "exist yet is written first, each group measured at the num_cpus the search tries")
    cmd.add_argument("--capacity", help="with --calibration: plan for this cluster, '4 nodes x {CPU: 16}' "
                     "or a YAML file (default: this machine); allocations it cannot hold are pruned")
    cmd.add_argument("--confirm", type=int, default=0, metavar="K",
                     help="with --calibration: re-run the K best trials and the config as given on this "
                     "machine's wall clock, and print predicted against measured seconds to the target")
    cmd.set_defaults(func=command)


def simulated(config: RunConfig, calibration: str | None, capacity: str | None) -> RunConfig:
    """The base config priced by a calibration on a capacity (``--calibration``/``--capacity``),
    its files as absolute paths: Tune runs each trial in its own directory."""
    raw = config.model_dump(mode="json")
    if calibration is not None or capacity is not None:
        raw |= {"clock": "simulated", "calibration": calibration or raw["calibration"],
                "capacity": capacity or raw["capacity"]}
    for key in ("calibration", "capacity"):
        if raw[key] is not None and Path(raw[key]).is_file():
            raw[key] = str(Path(raw[key]).resolve())
    return load_config(raw)


def command(args: Any) -> int:
    search = load_search(args.search)
    if args.confirm < 0:
        raise ConfigError(f"--confirm: the number of best trials to re-run, 0 or more; got {args.confirm}")
    given = load_config(args.config)
    check_search(given, search, simulated=args.calibration is not None or given.clock == "simulated")
    from orchestrator.tools.calibrate import calibrated_first

    with calibrated_first(given, search, args.calibration):
        config = simulated(given, args.calibration, args.capacity)
        if args.confirm and (config.clock != "simulated" or config.capacity is not None):
            raise ConfigError("--confirm checks a simulated search against this machine's wall clock: give "
                              "--calibration (and no --capacity, which plans for another cluster)")
        out = Path(args.out) if args.out else Path("runs") / f"tune-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        started = time.perf_counter()
        try:
            table = run_search(config, search, out, keep=max(1, args.confirm))
        except RuntimeError as exc:
            print(f"fedray: {exc}", file=sys.stderr)
            return 1
    pd.set_option("display.width", 200)
    shown = table.drop(columns=["run_dir", "pruned", "stopped_early"], errors="ignore")
    print(f"\n{len(table)} trials in {time.perf_counter() - started:.0f}s, sorted by {search.objective}:")
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}" if not math.isnan(v) else "-"))
    if "pruned" in table:
        for row in table[table.pruned.notna()].itertuples():
            print(f"pruned {row.trial_id}: {row.pruned}")
    if "stopped_early" in table:
        for row in table[table.stopped_early.notna()].itertuples():
            print(f"stopped {row.trial_id} {row.stopped_early}")
    print("\n" + margin_line(table, search))
    written, confirmed = "trials.csv, trials.parquet and best.yaml", None
    if args.confirm:
        from orchestrator.tools.confirm import confirm, confirm_lines

        confirmed = confirm(config, search, table, args.confirm, out.resolve())
        print("\n".join(confirm_lines(confirmed, search)))
        written = "trials.csv, trials.parquet, confirm.csv and best.yaml"
    if "pareto" in table:  # a simulated search: time against cost
        from orchestrator.records.plots import plot_tuning

        plot_tuning(table, out / "tune.png", confirmed)
        written = written.replace(" and best.yaml", ", tune.png and best.yaml")
    print(f"\nwrote {out}/{written}; run the best with: fedray run {out}/best.yaml")
    return 0

"""``fedray``: the command line. ``fedray run`` or ``fedray submit`` with no config runs the
built-in demo."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import logging
import os
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from orchestrator.config import ConfigError, RunConfig, load_config, missing_data_files

DEMO = "demo.yaml"


def demo_config_path() -> Path:
    return Path(str(resources.files("orchestrator").joinpath(DEMO)))


def default_out_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _load(path: str | None) -> RunConfig:
    return load_config(path or demo_config_path())


def cmd_run(args: argparse.Namespace) -> int:
    resume = getattr(args, "resume", None)  # continue a run from its latest checkpoint
    if resume and not args.config:
        if not (Path(resume) / "config.yaml").exists():
            raise ConfigError(f"--resume {resume}: no config.yaml there (is it a run directory?)")
        args.config = str(Path(resume) / "config.yaml")
    if resume:
        from orchestrator.loop.checkpoint import list_checkpoints

        if not list_checkpoints(resume):
            raise ConfigError(f"--resume {resume}: no checkpoint in {Path(resume) / 'checkpoints'}")
        args.out = resume
    config = _load(args.config)
    if args.address:
        config = config.model_copy(update={"ray": config.ray.model_copy(update={"address": args.address})})
    if config.ray.address is None:  # local run: the files must be here
        problems = missing_data_files(config)
        if problems:
            raise ConfigError("missing data:\n  " + "\n  ".join(problems))
    problem = partition_problem(config)
    if problem:
        raise ConfigError(problem)
    out = Path(args.out) if args.out else default_out_dir(config)
    from orchestrator.cluster.connect import ray_for
    from orchestrator.cluster.preflight import before_ray

    plan = before_ray(config)  # hosting chosen (or the run refused) before Ray starts
    config = plan.config if plan else config
    hosting = plan.line if plan else "hosting: decided on joining Ray, from its resources"
    if not args.quiet:
        print(f"fedray: running {config.name!r} with {config.num_participants} participants "
              f"({config.strategy.name}, {config.schedule.mode}); results -> {out}; {hosting}", flush=True)
    _notices(quiet=args.quiet)
    loading = _import_behind(*run_modules(config))
    with ray_for(config):  # Ray starts while the run's modules load: neither waits for the other
        loading.join()
        from orchestrator.loop.run import Orchestrator
        from orchestrator.records.progress import Progress

        progress = None if args.quiet else Progress(total=config.stop.max_aggregations)
        Orchestrator(config, out_dir=out, progress=progress, resume=bool(resume)).run()
    if args.quiet:
        print(f"results in {out}/")
    else:
        _print_summary(out)
    return 0


def run_modules(config: RunConfig) -> tuple[str, ...]:
    """What ``fedray run`` imports while Ray starts or is joined: pandas (the history), and
    torch (~1.1 s) only where the driver will use it: dedicated participants' actor class,
    server-side distillation, or a local run's hosting still undecided. A run on pool
    workers evaluates the global model on one of them and never imports torch here."""
    from strategies import STRATEGIES

    pooled = all(g.hosting == "pool" for g in config.groups)
    joined = config.ray.address is not None  # hosting is decided on joining: most often pools
    if (pooled or joined) and not STRATEGIES[config.strategy.name].needs_server_models:
        return ("pandas",)
    return ("torch", "pandas")


def _import_behind(*modules: str) -> threading.Thread:
    """Import ``modules`` in a thread; an import that fails there fails again, with its
    message, where the main thread imports it."""
    def load() -> None:
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=load, name="fedray-imports", daemon=True)
    thread.start()
    return thread


def _notices(quiet: bool) -> None:
    """fedray's notices (hosting chosen, participants that could not start, warnings) go to
    stdout as ``fedray: ...`` lines; ``--quiet`` keeps errors only."""
    log = logging.getLogger("fedray")
    if not any(isinstance(h, _Stdout) for h in log.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("fedray: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.ERROR if quiet else logging.INFO)


class _Stdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a notice comes (pytest and notebooks swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def partition_problem(config: RunConfig) -> str | None:
    """Why the run's dataset cannot be split among its participants, or None: checked
    before Ray starts (digits and a local table need no Ray; a table only on the cluster
    is checked there, when the run starts)."""
    dataset = config.dataset
    if dataset is None or (dataset.name == "table" and not Path(str(dataset.path)).exists()):
        return None
    from actors.data.load import partition_problem as problem_of

    return problem_of(dataset, config.num_partitions)


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    problem = partition_problem(config)
    if problem:
        raise ConfigError(f"{args.config or 'built-in demo'}: {problem}")
    print(f"{args.config or 'built-in demo'}: valid ({config.num_participants} participants "
          f"in {len(config.groups)} groups, {config.strategy.name}, {config.schedule.mode})")
    for problem in missing_data_files(config):
        print(f"  warning (local files): {problem}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Tables of one or more runs, PNGs into each RUN/plots/, an overlay for several."""
    from orchestrator.records.plots import write_overlay, write_run_plots
    from orchestrator.records.report import (
        ReportError,
        compare_table,
        load_run,
        print_frame,
        print_report,
    )

    try:
        runs = [load_run(d) for d in args.dirs]
    except ReportError as exc:
        print(f"fedray: {exc}", file=sys.stderr)
        return 2
    for run in runs:
        print_report(run)
        if not args.no_plots:
            for path in write_run_plots(run, wall=args.wall_clock):
                print(f"  wrote {path}")
    if len(runs) > 1:
        print_frame(compare_table(runs), "runs side by side")
        if not args.no_plots:
            out = Path(args.out) if args.out else runs[0].path / "plots"
            print(f"  wrote {write_overlay(runs, out / 'compare_accuracy_vs_time.png', wall=args.wall_clock)}")
    return 0


def _print_summary(out: Path) -> None:
    import json

    import pandas as pd

    from orchestrator.records.report import print_frame

    summary = json.loads((out / "summary.json").read_text())
    metrics = [k for k in summary if k.startswith(("final_", "best_"))]  # the task's: accuracy, r2, ...
    keys = [*metrics, "wall_seconds", "num_aggregations", "num_updates",
            "num_failures", "num_rejected", "mean_staleness", "stop_reason"]
    print()
    print_frame(pd.Series({k: summary.get(k) for k in keys}, name="value"), "summary")
    print(f"\nresults in {out}/ (summary.json, history.parquet, config.yaml); "
          f"tables and plots: fedray report {out}")


MODULE_COMMANDS: dict[str, tuple[str, str]] = {
    "submit": ("orchestrator.tools.submit", "run CONFIG on a Ray cluster through the Jobs API "
               "(the built-in demo if no CONFIG)"),
    "profile": ("orchestrator.tools.profile", "measure each participant's samples/s and memory"),
    "tune": ("orchestrator.tools.tune", "Ray Tune over resources, local work and schedule"),
    "release": ("orchestrator.tools.release", "end the idle pool workers fedray runs left on a running Ray cluster"),
}
"""Commands whose module defines their options and imports Ray, pandas or torch: a module
is imported only when its command is given, so ``fedray --help`` and ``fedray validate``
start in a fraction of a second. The help line is the one the module's parser states
(a test keeps them equal)."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``command`` names the one of :data:`MODULE_COMMANDS` to define in full."""
    parser = argparse.ArgumentParser(prog="fedray", description="Federated learning on Ray.")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run an experiment (the built-in demo if no CONFIG)")
    run.add_argument("config", nargs="?", help="YAML run config")
    run.add_argument("--out", help="run directory (default: runs/NAME-TIMESTAMP)")
    run.add_argument("--address", help="join a running Ray cluster ('auto' or ray://host:10001)")
    run.add_argument("--quiet", action="store_true",
                     help="print errors and where the results are, nothing else (no progress, notices or participant output)")
    run.add_argument("--resume", metavar="DIR",
                     help="continue the run in DIR from its latest checkpoint (config: DIR/config.yaml)")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a config without running it")
    validate.add_argument("config", nargs="?")
    validate.set_defaults(func=cmd_validate)

    for name, (module, help_text) in MODULE_COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)  # listed in --help; its options come with it

    report = sub.add_parser("report", help="tables and plots of finished runs")
    report.add_argument("dirs", nargs="+", metavar="DIR", help="run directories; several overlay")
    report.add_argument("--out", help="where the overlay of several runs goes (default: first DIR/plots)")
    report.add_argument("--no-plots", action="store_true", help="print the tables only")
    report.add_argument("--wall-clock", action="store_true",
                        help="plot wall seconds for runs on clock: simulated (default: the run's clock)")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *argv])
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"fedray: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedray: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from orchestrator.loop.run import RunError

        if isinstance(exc, RunError):
            print(f"fedray: {exc}", file=sys.stderr)
            return 1
        raise


def entry() -> None:
    """The ``fedray`` command: :func:`main`, then out of the process at once. By then a run
    has written and closed its results and shut its Ray down; what would remain is Python
    tearing torch and the rest down module by module, about half a second at the prompt on
    a 2-core laptop. Exit handlers and logging still run and output is flushed; with a
    thread still alive (none of fedray's), or an exception, Python exits as usual."""
    code = main()
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None or threading.active_count() > 1:
        sys.exit(code)
    run_exit_handlers()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
